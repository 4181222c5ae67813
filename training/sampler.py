"""Domain-aware minibatches (paper, Methods): each batch holds one task of one modality.

Each step first picks a modality, then a task from that modality's pool, then
the batch's records from that (modality, task) pool. Every choice is a pure
function of ``(seed, step)`` — and, for the records, of the rank — so the
sampler's position is just the step number: a resumed run rebuilds exactly the
batches an uninterrupted one would have seen, on every rank, with no state to
save beyond the step. All ranks of a DDP run pick the same modality and task
for a step (the same modules get gradients) and disjoint records.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from medversa.inference import ContextFields, Modality, Task, TaskFamily

from .records import ClassificationRecord, Record, ReportRecord, SegmentationRecord, TextRecord, VQARecord
from .samples import Sample, build_sample, tasks_for


def strata_of(record: Record) -> list[str]:
    """What a balanced pool draws uniformly: each structure of a mask record, a record's class set or answer,
    a report with images or a text-only one."""
    if isinstance(record, SegmentationRecord):
        return sorted(record.masks)
    if isinstance(record, ClassificationRecord):
        return [", ".join(sorted(record.labels)) or "no finding"]
    if isinstance(record, VQARecord):
        return [record.answer.lower()]
    if isinstance(record, (ReportRecord, TextRecord)):  # reports with images vs language-only texts
        return ["with images" if isinstance(record, ReportRecord) and record.images else "text only"]
    return [""]


@dataclass(frozen=True)
class Pool:
    modality: Modality
    task: Task
    records: tuple[Record, ...]


class DomainAwareSampler:
    def __init__(
        self,
        records: list[Record],
        seed: int,
        batch_size: dict[str, int] | int,
        modality_weights: dict[str, float] | None = None,
        task_weights: dict[str, float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        context_fields: ContextFields | None = None,
        stages: list | None = None,
        balanced: tuple[str, ...] | list[str] = (),
        strata_weights: dict[str, dict[str, float]] | None = None,
        detection_all_targets: float = 0.0,
        context_dropout: float = 0.0,
    ) -> None:
        grouped: dict[tuple[Modality, Task], list[Record]] = defaultdict(list)
        for record in records:
            for task in tasks_for(record):
                grouped[(record.modality, task)].append(record)
        if not grouped:
            raise ValueError("no training records: every dataset given was empty")
        self.pools = {key: Pool(key[0], key[1], tuple(recs))
                      for key, recs in sorted(grouped.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))}
        self.modalities = sorted({m for m, _ in self.pools}, key=lambda m: m.value)
        self.seed = seed
        self.batch_size = batch_size
        self.modality_weights = modality_weights or {}
        self.task_weights = task_weights or {}
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.context_fields = context_fields
        self.detection_all_targets = detection_all_targets
        self.context_dropout = context_dropout
        unknown_b = set(balanced) - {t.value for t in Task}
        if unknown_b:
            raise ValueError(f"unknown balanced task(s): {sorted(unknown_b)}")
        #: Balanced pools: {(modality, task): {key: record indices}}, a key drawn uniformly, then a record.
        self.strata: dict[tuple[Modality, Task], dict[str, list[int]]] = {}
        for key, pool in self.pools.items():
            if key[1].value in balanced:
                groups: dict[str, list[int]] = defaultdict(list)
                for i, record in enumerate(pool.records):
                    for stratum in strata_of(record):
                        groups[stratum].append(i)
                self.strata[key] = dict(sorted(groups.items()))
        #: Weights of the strata of a pool whose task has ``strata_weights`` (uniform draw otherwise).
        self.strata_weights: dict[tuple[Modality, Task], list[float]] = {}
        for task_name, weights in (strata_weights or {}).items():
            if task_name not in balanced:
                raise ValueError(f"strata_weights for {task_name!r}, which is not balanced")
            for key, groups in self.strata.items():
                if key[1].value != task_name:
                    continue
                unknown_s = set(weights) - set(groups)
                if unknown_s:
                    raise ValueError(f"strata_weights of {task_name}: no stratum {sorted(unknown_s)} in "
                                     f"{key[0].value}/{task_name}; it has {sorted(groups)}")
                w = [float(weights.get(stratum, 1.0)) for stratum in groups]
                if any(x < 0 for x in w) or sum(w) <= 0:
                    raise ValueError(f"strata_weights of {task_name}: weights must be >= 0 and not all 0")
                self.strata_weights[key] = w
        #: (first step after the stage, modality weights, task weights) per stage, in order.
        self.stages: list[tuple[int, dict[str, float], dict[str, float]]] = []
        end = 0
        for stage in stages or []:
            end += stage.steps
            self.stages.append((end, {**self.modality_weights, **(stage.modality_weights or {})},
                                {**self.task_weights, **(stage.task_weights or {})}))
        for _, mw, tw in [(0, self.modality_weights, self.task_weights), *self.stages]:
            unknown_m = set(mw) - {m.value for m in Modality}
            unknown_t = set(tw) - {t.value for t in Task}
            if unknown_m or unknown_t:
                raise ValueError(f"unknown modality/task weights: {sorted(unknown_m | unknown_t)}")

    def batch_size_for(self, modality: Modality) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size
        return int(self.batch_size.get(modality.value, self.batch_size.get("default", 1)))

    def _pick(self, rng: np.random.Generator, options: list, weights: list[float]):
        w = np.asarray(weights, dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError("all sampling weights are zero")
        return options[int(rng.choice(len(options), p=w / w.sum()))]

    def weights(self, step: int) -> tuple[dict[str, float], dict[str, float]]:
        """The modality and task weights of ``step``'s stage (the run's own after the last stage)."""
        for end, modality_weights, task_weights in self.stages:
            if step < end:
                return modality_weights, task_weights
        return self.modality_weights, self.task_weights

    def choose(self, step: int) -> Pool:
        """The (modality, task) pool of ``step``: the same on every rank."""
        modality_weights, task_weights = self.weights(step)
        rng = np.random.default_rng([self.seed, step, 0])
        # A modality takes part only if some task of it does (a stage may train a few tasks only).
        modalities = [m for m in self.modalities if modality_weights.get(m.value, 1.0) > 0
                      and any(k[0] is m and task_weights.get(k[1].value, 1.0) > 0 for k in self.pools)]
        modality = self._pick(rng, modalities, [modality_weights.get(m.value, 1.0) for m in modalities])
        tasks = [key[1] for key in self.pools if key[0] is modality and task_weights.get(key[1].value, 1.0) > 0]
        task = self._pick(rng, tasks, [task_weights.get(t.value, 1.0) for t in tasks])
        return self.pools[(modality, task)]

    def samples(self, step: int) -> list[Sample]:
        """This rank's samples of ``step`` (records drawn with replacement; augmentation seeded per sample)."""
        pool = self.choose(step)
        size = self.batch_size_for(pool.modality)
        rng = np.random.default_rng([self.seed, step, 1])
        strata = self.strata.get((pool.modality, pool.task))
        if strata:
            keys = list(strata)
            weights = self.strata_weights.get((pool.modality, pool.task))
            if weights is None:
                drawn = rng.integers(len(keys), size=size * self.world_size)
            else:
                p = np.asarray(weights, dtype=np.float64)
                drawn = rng.choice(len(keys), size=size * self.world_size, p=p / p.sum())
            chosen = [keys[int(k)] for k in drawn]
            picks = [strata[k][int(rng.integers(len(strata[k])))] for k in chosen]
        else:
            chosen = [None] * (size * self.world_size)
            picks = [int(i) for i in rng.integers(len(pool.records), size=size * self.world_size)]
        mine = range(self.rank * size, (self.rank + 1) * size)
        return [build_sample(pool.records[picks[i]], pool.task,
                             np.random.default_rng([self.seed, step, 2, i]), self.augment,
                             self.context_fields,
                             structure=chosen[i] if pool.task.family is TaskFamily.SEGMENTATION else None,
                             detection_all_targets=self.detection_all_targets,
                             context_dropout=self.context_dropout)
                for i in mine]

    def describe_strata(self) -> dict[str, dict[str, int]]:
        """Records per stratum of each balanced pool."""
        return {f"{m.value}/{t.value}": {k: len(v) for k, v in groups.items()}
                for (m, t), groups in self.strata.items()}

    def describe(self) -> dict[str, int]:
        """Pool sizes, for the data manifest and the log."""
        return {f"{m.value}/{t.value}": len(p.records) for (m, t), p in self.pools.items()}
