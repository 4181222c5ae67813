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
from medversa.inference.context import ContextFields
from medversa.inference.tasks import Modality, Task

from .records import Record
from .samples import Sample, build_sample, tasks_for


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
    ) -> None:
        grouped: dict[tuple[Modality, Task], list[Record]] = defaultdict(list)
        for record in records:
            for task in tasks_for(record):
                grouped[(record.modality, task)].append(record)
        if not grouped:
            raise ValueError("no training records: every dataset given was empty")
        self.pools = {key: Pool(key[0], key[1], tuple(recs)) for key, recs in sorted(grouped.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))}
        self.modalities = sorted({m for m, _ in self.pools}, key=lambda m: m.value)
        self.seed = seed
        self.batch_size = batch_size
        self.modality_weights = modality_weights or {}
        self.task_weights = task_weights or {}
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.context_fields = context_fields
        unknown_m = set(self.modality_weights) - {m.value for m in Modality}
        unknown_t = set(self.task_weights) - {t.value for t in Task}
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

    def choose(self, step: int) -> Pool:
        """The (modality, task) pool of ``step``: the same on every rank."""
        rng = np.random.default_rng([self.seed, step, 0])
        modalities = [m for m in self.modalities if self.modality_weights.get(m.value, 1.0) > 0]
        modality = self._pick(rng, modalities, [self.modality_weights.get(m.value, 1.0) for m in modalities])
        tasks = [key[1] for key in self.pools if key[0] is modality and self.task_weights.get(key[1].value, 1.0) > 0]
        task = self._pick(rng, tasks, [self.task_weights.get(t.value, 1.0) for t in tasks])
        return self.pools[(modality, task)]

    def samples(self, step: int) -> list[Sample]:
        """This rank's samples of ``step`` (records drawn with replacement; augmentation seeded per sample)."""
        pool = self.choose(step)
        size = self.batch_size_for(pool.modality)
        rng = np.random.default_rng([self.seed, step, 1])
        picks = rng.integers(len(pool.records), size=size * self.world_size)
        mine = range(self.rank * size, (self.rank + 1) * size)
        return [build_sample(pool.records[int(picks[i])], pool.task,
                             np.random.default_rng([self.seed, step, 2, i]), self.augment,
                             self.context_fields) for i in mine]

    def describe(self) -> dict[str, int]:
        """Pool sizes, for the data manifest and the log."""
        return {f"{m.value}/{t.value}": len(p.records) for (m, t), p in self.pools.items()}
