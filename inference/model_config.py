"""Model configuration: dataclasses kept apart from the modules that use them.

A :class:`MedVersaConfig` fully describes one MedVersa instance (architecture,
pre-processing and generation defaults). It serialises to JSON and refuses
unknown keys, so a typo in a checkpoint's ``config.json`` fails loudly instead of
silently building a different model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: CLIP normalisation used by the published preprocessing (utils.load_and_preprocess_image).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LLMConfig:
    """The Llama orchestrator (transformers ``LlamaConfig`` fields we set)."""

    vocab_size: int = 32005  # including the five MedVersa tokens
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    #: Local Hugging Face folder with pretrained Llama weights (never a hub id).
    pretrained_path: str | None = None
    #: Parameter dtype of the LLM as the published model holds it.
    dtype: str = "bfloat16"


@dataclass
class Encoder2DConfig:
    """Swin transformer 2D encoder (transformers ``SwinConfig``)."""

    image_size: int = 224
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    pretrained_path: str | None = None

    @property
    def out_channels(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid(self) -> int:
        """Side of the last stage's token grid (7 for 224 input, patch 4, 4 stages)."""
        return self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)


@dataclass
class Encoder3DConfig:
    """3D UNet (encoder for visual tokens, full UNet for 3D segmentation)."""

    base_channels: int = 32
    num_groups: int = 16

    @property
    def out_channels(self) -> int:
        return 8 * self.base_channels


@dataclass
class Seg2DConfig:
    """2D UNet with a ResNet-18-shaped encoder and GroupNorm everywhere."""

    #: Widths of layer1..layer4 (the 7x7 stem is 64 wide, as in ResNet-18).
    channels: tuple[int, ...] = (64, 128, 256, 512)
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    num_groups: int = 16
    #: Local path to ImageNet ResNet-18 weights (torchvision/timm keys), optional.
    pretrained_path: str | None = None


@dataclass
class LoRASettings:
    """LoRA on the LLM (peft)."""

    enabled: bool = True
    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class PreprocessConfig:
    """Published preprocessing constants (see shared/reference/README.md)."""

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    ct_hu_min: float = -200.0
    ct_hu_max: float = 300.0
    #: Model volume shape (depth, first in-plane axis, second in-plane axis).
    ct_shape: tuple[int, int, int] = (64, 192, 192)
    mask_threshold: float = 0.5


@dataclass
class GenerationConfig:
    max_new_tokens: int = 450
    end_sym: str = "###"
    max_batch_size: int = 8
    #: Keep one box where the answer names a class twice and the two boxes overlap by IoU >= this
    #: (non-maximum suppression per class); None keeps every box, as the official code does.
    duplicate_box_iou: float | None = None
    #: Reports: never repeat an n-gram of this many tokens (greedy decoding's loops); None: plain
    #: greedy, as the official code decodes.
    report_no_repeat_ngram: int | None = None
    #: Answers in text (every task but detection and segmentation) never decode a task token, so a
    #: report cannot draw a box; False: any token anywhere, as the official code decodes.
    text_answers_without_task_tokens: bool = False


@dataclass
class MedVersaConfig:
    """Everything needed to build one MedVersa model."""

    name: str = "custom"
    llm: LLMConfig = field(default_factory=LLMConfig)
    encoder_2d: Encoder2DConfig = field(default_factory=Encoder2DConfig)
    encoder_3d: Encoder3DConfig = field(default_factory=Encoder3DConfig)
    seg_2d: Seg2DConfig = field(default_factory=Seg2DConfig)
    lora: LoRASettings = field(default_factory=LoRASettings)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    #: Visual tokens per image after adaptive pooling (a square number: 9 = 3x3).
    num_visual_tokens: int = 9
    #: Local folder with tokenizer files; None means the bundled tokenizer.
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        side = round(self.num_visual_tokens**0.5)
        if side * side != self.num_visual_tokens:
            raise ValueError(
                f"num_visual_tokens must be a square number, got {self.num_visual_tokens}"
            )

    @property
    def pool_side(self) -> int:
        return round(self.num_visual_tokens**0.5)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedVersaConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_json(cls, path: str | Path) -> MedVersaConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        ftype = fields[key].type
        sub = _NESTED.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None:
            kwargs[key] = _build(sub, value, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "LLMConfig": LLMConfig,
    "Encoder2DConfig": Encoder2DConfig,
    "Encoder3DConfig": Encoder3DConfig,
    "Seg2DConfig": Seg2DConfig,
    "LoRASettings": LoRASettings,
    "PreprocessConfig": PreprocessConfig,
    "GenerationConfig": GenerationConfig,
}
