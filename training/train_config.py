"""Training configuration: one YAML file (or a shipped recipe), validated, unknown keys rejected.

Recipes live in ``training/recipes/<name>.yaml``. Relative dataset roots and the
output folder resolve against the current directory, so a recipe runs from a
checkout as ``medversa train --recipe demo``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).parent / "recipes"


@dataclass
class DatasetSpec:
    name: str
    root: str
    split: str = "train"


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up from ``warmup_start_lr`` then cosine decay to ``min_lr`` (paper)."""

    lr: float = 3e-4
    min_lr: float = 3e-6
    warmup_start_lr: float = 1e-7
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0


@dataclass
class StageConfig:
    """A span of steps with its own sampling weights (staged training: e.g. structure routing first).

    Weights not given fall back to the run's ``modality_weights``/``task_weights``; a weight of 0
    leaves a pool out of the stage. Only sampling changes between stages: the model, the optimizer
    and the one learning-rate schedule over all steps carry on.
    """

    name: str = "stage"
    steps: int = 1
    modality_weights: dict[str, float] | None = None
    task_weights: dict[str, float] | None = None
    #: The detection head and segmentation decoders read each structure's routing code, not the LLM's
    #: state (with loss_weights.route > 0 the LLM learns meanwhile to produce the codes).
    teacher_conditioning: bool = False


@dataclass
class TrainConfig:
    name: str = "custom"
    preset: str = "demo"
    #: Start from this checkpoint folder instead of the preset's random weights.
    init_checkpoint: str | None = None
    datasets: list[DatasetSpec] = field(default_factory=list)
    seed: int = 0
    steps: int = 1000
    batch_size: dict[str, int] = field(default_factory=lambda: {"cxr": 8, "derm": 8, "ct": 1})
    modality_weights: dict[str, float] = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)
    max_length: int = 256
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    #: Train the LLM's base weights too (a from-scratch LLM, e.g. the demo); False: LoRA only (7B).
    train_llm_base: bool = False
    gradient_checkpointing: bool = False
    #: bf16 autocast: None = on CUDA only; True also on the CPU (tests the GPU path here); False = never.
    bf16: bool | None = None
    #: "ddp" (default under torchrun) or "fsdp" (7B).
    strategy: str = "ddp"
    augment: bool = True
    #: Clinical context fields per modality written into <context> (None: every field the data has).
    #: The checkpoint records them, and the node renders DICOM headers with the same fields.
    context_fields: dict[str, list[str]] | None = None
    #: Tasks the checkpoint declares (None: every task it had data for); the node routes no others.
    declared_tasks: list[str] | None = None
    #: Consecutive stages (their steps sum to ``steps``); empty: one stage with the run's weights.
    stages: list[StageConfig] = field(default_factory=list)
    #: Tasks whose batches are balanced: a structure (segmentation), class set (classification) or answer
    #: (VQA) drawn uniformly, then a record that has it.
    balanced: list[str] = field(default_factory=list)
    #: Per balanced task, a weight per stratum (strata not named weigh 1; 0 leaves one out), e.g.
    #: ``{report_findings: {"text only": 0}}``: findings from radiographs with notes only.
    strata_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Share of detection samples that ask for every candidate class of the record (random order);
    #: the rest ask a random number of them (1 to all). 0 keeps earlier recipes' samples exactly.
    detection_all_targets: float = 0.0
    #: Chance that each clinical-context field (age, sex, view...) of a training sample is left out, as
    #: in a request from DICOM that lacks the tag (anonymised or minimal headers): the image, not the
    #: context, must tell a radiograph from a skin lesion. 0 keeps earlier recipes' samples exactly.
    context_dropout: float = 0.0
    #: CT steps train on organ-centred crops of the model volume of this [z, x, y] size (None: the whole
    #: volume, as the paper); ``ct_crop_foreground`` is the share of crops centred inside the organ.
    ct_crop: list[int] | None = None
    ct_crop_foreground: float = 0.75
    #: Learning-rate multipliers by parameter-name prefix (longest prefix wins), e.g. {"seg_2d_text": 10}.
    lr_scale: dict[str, float] = field(default_factory=dict)
    #: Each answer's share of the segmentation/detection loss weight (the language loss weighs 1).
    loss_weights: dict[str, float] = field(default_factory=dict)
    #: Inference settings the checkpoint carries (its config's ``generation``), e.g. ``{duplicate_box_iou: 0.5}``;
    #: they change nothing in training. A continued run otherwise keeps its starting checkpoint's.
    generation: dict[str, Any] = field(default_factory=dict)
    save_every: int = 500
    keep_states: int = 2
    log_every: int = 10
    output_dir: str = "runs/custom"
    checkpoint_dtype: str | None = "float16"
    threads: int | None = None
    #: A warning, never a stop: stopping on time would make a run depend on the machine.
    expected_minutes: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a mapping")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_path(name: str) -> Path:
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise ValueError(f"unknown recipe {name!r}; shipped recipes: {known}")
    return path


def _build(cls: type, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "datasets":
            kwargs[key] = [_build(DatasetSpec, d, f"{where}.datasets[{i}]") for i, d in enumerate(value or [])]
        elif key == "stages":
            kwargs[key] = [_build(StageConfig, d, f"{where}.stages[{i}]") for i, d in enumerate(value or [])]
        elif key == "optimizer":
            opt = _build(OptimizerConfig, value or {}, f"{where}.optimizer")
            opt.betas = tuple(opt.betas)
            kwargs[key] = opt
        else:
            kwargs[key] = value
    config = cls(**kwargs)
    if cls is TrainConfig:
        if config.steps < 1:
            raise ValueError(f"{where}: steps must be >= 1")
        if config.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"{where}: strategy must be 'ddp' or 'fsdp', got {config.strategy!r}")
        if config.stages and sum(s.steps for s in config.stages) != config.steps:
            raise ValueError(f"{where}: the stages' steps sum to {sum(s.steps for s in config.stages)}, "
                             f"not steps ({config.steps})")
        if any(s.steps < 1 for s in config.stages):
            raise ValueError(f"{where}: every stage has at least one step")
        unknown = set(config.loss_weights) - {"lm", "det", "seg", "route"}
        if unknown:
            raise ValueError(f"{where}: loss_weights has unknown key(s) {sorted(unknown)}; known: det, lm, route, seg")
        from medversa.inference import GenerationConfig

        unknown_g = set(config.generation) - {f.name for f in dataclasses.fields(GenerationConfig)}
        if unknown_g:
            raise ValueError(f"{where}: generation has unknown key(s) {sorted(unknown_g)}")
        if not 0.0 <= config.detection_all_targets <= 1.0:
            raise ValueError(f"{where}: detection_all_targets is a share between 0 and 1, "
                             f"got {config.detection_all_targets}")
        if not 0.0 <= config.context_dropout <= 1.0:
            raise ValueError(f"{where}: context_dropout is a chance between 0 and 1, got {config.context_dropout}")
        if config.ct_crop is not None and (len(config.ct_crop) != 3 or any(
                not isinstance(n, int) or n < 16 or n % 16 for n in config.ct_crop)):
            raise ValueError(f"{where}: ct_crop is three sizes [z, x, y], each a multiple of 16 (the 3D UNet "
                             f"halves them four times), got {config.ct_crop}")
        if not 0.0 <= config.ct_crop_foreground <= 1.0:
            raise ValueError(f"{where}: ct_crop_foreground is a share between 0 and 1, got {config.ct_crop_foreground}")
        not_balanced = set(config.strata_weights) - set(config.balanced)
        if not_balanced:
            raise ValueError(f"{where}: strata_weights names task(s) not in balanced: {sorted(not_balanced)}")
        if config.optimizer.warmup_steps >= config.steps:
            raise ValueError(f"{where}: optimizer.warmup_steps must be below steps")
    return config
