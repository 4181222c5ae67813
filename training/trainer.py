"""The training loop: one CPU process or ``torchrun`` (DDP/FSDP), resumable to the exact step.

A run writes to ``output_dir``:
- ``metrics.jsonl``: one line per step (task, modality, losses, learning rate, samples/s);
- ``state/step-NNNNNN/``: model, optimizer, scheduler, step and each rank's RNG states;
- ``checkpoint/``: the final model in the inference checkpoint format;
- ``plots/*.png``: loss curves per task.

Resuming restores the model, optimizer, scheduler and RNG states; the sampler
needs only the step (its batches are a function of seed and step), so a resumed
run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from medversa.inference import (
    MULTI_VIEW_TASKS,
    ContextFields,
    Declaration,
    MedVersaModel,
    Task,
    build_model,
    context_fields_from,
    load_checkpoint,
    save_checkpoint,
)

from . import distributed
from .batching import collate, crop_volumes
from .objective import TrainingObjective
from .records import Record, ReportRecord
from .sampler import DomainAwareSampler, Pool
from .schedule import make_scheduler
from .train_config import StageConfig, TrainConfig

LOGGER = logging.getLogger(__name__)

LOGGED = ("total", "lm", "det", "seg", "route")


def views_per_request(pools: Iterable[Pool]) -> int | None:
    """The most chest views one multi-view sample shows (a report record's films; a classification
    sample shows one film); None without such samples. The node sends no more (:class:`Declaration`)."""
    counts = [len(record.images) if isinstance(record, ReportRecord) else 1
              for pool in pools if pool.task in MULTI_VIEW_TASKS for record in pool.records]
    return max((n for n in counts if n), default=None)


def load_records(config: TrainConfig) -> list[Record]:
    from .datasets.registry import read_dataset

    records: list[Record] = []
    for spec in config.datasets:
        if spec.split == "holdout":
            raise ValueError(f"dataset {spec.name} at {spec.root}: the holdout split is for evaluation only")
        records += read_dataset(spec.name, Path(spec.root), spec.split)
    if not records:
        raise ValueError("the training config lists no datasets (or they are empty)")
    return records


def data_manifest(config: TrainConfig, sampler: DomainAwareSampler) -> dict:
    return {"datasets": [vars(s) for s in config.datasets], "pools": sampler.describe()}


def _set_trainable(model: MedVersaModel, train_llm_base: bool) -> None:
    """Everything trains; the LLM's base weights only when asked (LoRA alone otherwise, as the paper)."""
    for name, param in model.named_parameters():
        if name.startswith("llm."):
            param.requires_grad = train_llm_base or "lora_" in name
        else:
            param.requires_grad = True


def param_groups(objective: torch.nn.Module, lr_scale: dict[str, float], lr: float) -> list[dict]:
    """Trainable parameters grouped by learning-rate multiplier (longest matching name prefix wins).

    Names are the model's (``seg_2d_text.1.weight``, ``llm.``...); the LambdaLR schedule scales
    every group's own rate, so a multiplier holds through warm-up and decay.
    """
    groups: dict[float, list] = {}
    for name, param in objective.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("model.")
        matches = [p for p in lr_scale if name.startswith(p)]
        scale = float(lr_scale[max(matches, key=len)]) if matches else 1.0
        groups.setdefault(scale, []).append(param)
    return [{"params": params, "lr": lr * scale} for scale, params in sorted(groups.items())]


def bf16_enabled(device: torch.device, bf16: bool | None) -> bool:
    """bf16 autocast by default on CUDA only; True forces it (also on the CPU), False never."""
    return device.type == "cuda" if bf16 is None else bf16


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_state(output_dir: Path) -> Path | None:
    states = sorted((output_dir / "state").glob("step-*"))
    complete = [s for s in states if (s / "COMPLETE").is_file()]
    return complete[-1] if complete else None


class Trainer:
    def __init__(self, config: TrainConfig, records: list[Record] | None = None) -> None:
        self.config = config
        self.runtime = distributed.setup()
        self.output = Path(config.output_dir)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        if config.init_checkpoint:
            model, tokenizer = load_checkpoint(config.init_checkpoint)
        else:
            model, tokenizer = build_model(config.preset)
        if config.generation:
            model.config.generation = dataclasses.replace(model.config.generation, **config.generation)
        if config.ct_crop is not None and any(c > s for c, s in zip(config.ct_crop, model.config.preprocess.ct_shape,
                                                                    strict=True)):
            raise ValueError(f"ct_crop {config.ct_crop} is larger than the model volume "
                             f"{list(model.config.preprocess.ct_shape)}")
        self.tokenizer = tokenizer
        self.model = model.to(self.runtime.device)
        _set_trainable(self.model, config.train_llm_base)
        if config.gradient_checkpointing:
            # Non-reentrant: the LLM reads inputs_embeds, which need not require grad (LoRA-only runs).
            self.model.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.records = records if records is not None else load_records(config)
        self.sampler = DomainAwareSampler(
            self.records, config.seed, config.batch_size, config.modality_weights, config.task_weights,
            self.runtime.rank, self.runtime.world_size, config.augment, self.context_fields, config.stages,
            config.balanced, config.strata_weights, config.detection_all_targets,
            context_dropout=config.context_dropout)
        self._inner = TrainingObjective(self.model, tokenizer.ids.image, config.loss_weights)
        self.objective = distributed.wrap(self._inner, self.runtime, config.strategy)
        self._sharded = self.runtime.distributed and config.strategy == "fsdp"
        #: What the optimizer updates and the clipping measures (fixed once trainability is set).
        self.params = [p for p in self.objective.parameters() if p.requires_grad]
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(param_groups(self._inner, config.lr_scale, opt.lr), lr=opt.lr,
                                           betas=opt.betas, weight_decay=opt.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config.steps, opt)
        self.step = 0
        torch.manual_seed(config.seed + 1000 * self.runtime.rank)  # per-rank dropout streams

    # --- state -----------------------------------------------------------------------------------
    def _full_state(self, with_optimizer: bool) -> tuple[dict, dict | None]:
        """Unsharded weights keyed as MedVersaModel's (and optimizer state); a collective under FSDP."""
        model_state, optim_state = distributed.full_state(self._inner, self.optimizer if with_optimizer else None)
        return {k.removeprefix("model."): v for k, v in model_state.items()}, optim_state

    def save_state(self) -> Path:
        folder = self.output / "state" / f"step-{self.step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), folder / f"rng-rank{self.runtime.rank}.pt")
        if self.runtime.distributed:
            torch.distributed.barrier()
        model_state, optim_state = self._full_state(with_optimizer=True)
        if self.runtime.is_main:
            torch.save({"model": model_state, "optimizer": optim_state,
                        "scheduler": self.scheduler.state_dict(), "step": self.step,
                        "world_size": self.runtime.world_size, "config": self.config.to_dict()},
                       folder / "trainer.pt")
            (folder / "COMPLETE").write_text(str(self.step))
            states = sorted((self.output / "state").glob("step-*"))
            for old in states[:-self.config.keep_states]:
                shutil.rmtree(old, ignore_errors=True)
        if self.runtime.distributed:
            torch.distributed.barrier()
        return folder

    def resume(self, folder: Path) -> None:
        state = torch.load(folder / "trainer.pt", map_location=self.runtime.device, weights_only=False)
        if state["world_size"] != self.runtime.world_size:
            raise ValueError(f"{folder} was written by {state['world_size']} process(es); "
                             f"resume it with the same number (this run has {self.runtime.world_size})")
        distributed.load_full_state(self._inner, self.optimizer, {f"model.{k}": v for k, v in state["model"].items()},
                                    state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        _set_rng_state(torch.load(folder / f"rng-rank{self.runtime.rank}.pt", weights_only=False))
        LOGGER.info("resumed from %s at step %d", folder, self.step)

    # --- loop ------------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.runtime.device, bf16_enabled(self.runtime.device, self.config.bf16))

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        samples = self.sampler.samples(self.step)
        batch = collate(samples, self.tokenizer, self.model.config, self.config.max_length)
        if self.config.ct_crop is not None:
            batch = crop_volumes(batch, tuple(self.config.ct_crop), self.config.ct_crop_foreground,
                                 seed=int(np.random.SeedSequence(
                                     [self.config.seed, self.step, self.runtime.rank, 4]).generate_state(1)[0]))
        batch = _to_device(batch, self.runtime.device)
        batch.teacher_conditioning = self.stage(self.step).teacher_conditioning
        self.objective.train()
        with self._autocast():
            losses = self.objective(batch)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optimizer.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        # A non-finite gradient would write NaN into every weight (clipping scales by it): skip that
        # update, as a loss scaler does, and say so. Seen with bf16 autocast of 3D convolutions on the CPU.
        skipped = not bool(torch.isfinite(grad_norm))
        if skipped:
            LOGGER.warning("step %d (%s): gradient norm %s; update skipped", self.step, batch.task.value,
                           float(grad_norm))
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        values = {k: float(losses[k].detach()) if k in losses else 0.0 for k in LOGGED}
        values = distributed.mean_over_ranks(values, self.runtime)
        elapsed = time.perf_counter() - t0
        row = {"step": self.step, "stage": self.stage(self.step).name, "task": batch.task.value,
               "modality": batch.modality.value,
               **{f"loss_{k}": round(v, 6) for k, v in values.items() if k in losses or k == "total"},
               "lr": lr, "grad_norm": round(float(grad_norm), 4),
               "samples_per_s": round(batch.size * self.runtime.world_size / elapsed, 3), "seconds": round(elapsed, 3)}
        if skipped:
            row["skipped"] = True
        self.step += 1
        return row

    def fit(self, resume: bool = False, stop_at: int | None = None) -> Path | None:
        """Train to ``config.steps`` (or only to ``stop_at``, saving state, as a pre-empted run would)."""
        if resume:
            folder = latest_state(self.output)
            if folder is not None:
                self.resume(folder)
        self.output.mkdir(parents=True, exist_ok=True)
        log_path = self.output / "metrics.jsonl"
        if self.runtime.is_main:
            _truncate_log(log_path, self.step)
            (self.output / "train-config.yaml").write_text(_yaml(self.config.to_dict()))
            LOGGER.info("pools: %s", self.sampler.describe())
        bar = None
        if self.runtime.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.config.steps, initial=self.step, desc=self.config.name, unit="step",
                       dynamic_ncols=True)
        started = time.time()
        try:
            while self.step < self.config.steps:
                if stop_at is not None and self.step >= stop_at:
                    self.save_state()
                    distributed.teardown(self.runtime)
                    return None
                row = self.train_step()
                if self.runtime.is_main:
                    with log_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss_total']:.3f}", task=row["task"][:18],
                                    sps=f"{row['samples_per_s']:.1f}")
                if self.step % self.config.save_every == 0 or self.step == self.config.steps:
                    self.save_state()
        finally:
            if bar is not None:
                bar.close()
        minutes = (time.time() - started) / 60
        if self.config.expected_minutes and minutes > self.config.expected_minutes:
            LOGGER.warning("training took %.1f min, more than the expected %.1f", minutes, self.config.expected_minutes)
        if self._sharded:
            self._final_state = self._full_state(with_optimizer=False)  # every rank takes part
        final = None
        if self.runtime.is_main:
            final = self.export(minutes)
            from .plots import plot_losses

            plot_losses(log_path, self.output / "plots")
        distributed.teardown(self.runtime)
        return final

    def stage(self, step: int) -> StageConfig:
        """The stage ``step`` belongs to (a default one when the config has no stages)."""
        end = 0
        for stage in self.config.stages:
            end += stage.steps
            if step < end:
                return stage
        return StageConfig(name="all", steps=self.config.steps)

    @property
    def context_fields(self) -> ContextFields | None:
        fields = self.config.context_fields
        return context_fields_from(fields) if fields is not None else None

    def declaration(self) -> Declaration:
        """What the checkpoint promises the node: its tasks (declared, else those it had data for), its context."""
        if self.config.declared_tasks is not None:
            tasks = tuple(Task(t) for t in self.config.declared_tasks)
        else:
            tasks = tuple(t for t in Task if any(key[1] is t for key in self.sampler.pools))
        return Declaration(tasks, self.context_fields, prior_details=False,
                           views_per_request=views_per_request(self.sampler.pools.values()))

    def export(self, minutes: float) -> Path:
        extra = {**self.declaration().to_meta(),
                 "training": {"recipe": self.config.name, "steps": self.config.steps, "seed": self.config.seed,
                              "minutes": round(minutes, 1), "data": data_manifest(self.config, self.sampler)}}
        if self._sharded:
            # Rank 0 gathered the full weights in save_state; rebuild an unsharded copy to write.
            state, _ = self._final_state
            model, _ = build_model(self.model.config)
            model.load_state_dict(state)
        else:
            model = self.model
        return save_checkpoint(model, self.tokenizer, self.output / "checkpoint",
                               dtype=self.config.checkpoint_dtype, extra=extra)


def _to_device(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    batch.ids, batch.attention, batch.labels = (t.to(device) for t in (batch.ids, batch.attention, batch.labels))
    batch.images = [i.to(device) for i in batch.images]
    batch.det_boxes = batch.det_boxes.to(device)
    batch.seg_masks = [m.to(device) for m in batch.seg_masks]
    return batch


def _truncate_log(path: Path, step: int) -> None:
    """On resume keep only the lines of steps already done (a killed run may have logged more)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < step]
    path.write_text("".join(line + "\n" for line in kept))


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)
