"""MedVersa: the model and orchestrated inference, and what the other rooms use of it.

The node runs :class:`Analyzer` (``load_analyzer(...).run(requests) -> answers``)
on :class:`TaskRequest` objects and reads :class:`Answer` objects back;
``dicom_mapping`` builds requests and codes answers by the one vocabulary of
class phrases; ``training`` builds, trains and saves the same model. This room
knows nothing of DICOM or networking (see ``ARCHITECTURE.md``).

The types, tasks, vocabulary and the loader import without torch; the model's
parts (``Analyzer``, ``MedVersaModel``, checkpoints, pre-/post-processing) load on
first use, so a process that never runs the model never pays for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .boxes import PixelBox, box_overlap
from .bundled import BUNDLED_CHECKPOINT, load_analyzer, model_identity
from .clinical_context import ClinicalContext, ContextFields, render_context
from .declaration import Declaration, context_fields_from
from .model_config import GenerationConfig, MedVersaConfig
from .presets import create_config
from .schema import MAX_DETECTION_TARGETS, Answer, Box, ImageInput, Mask2D, Mask3D, TaskRequest
from .tasks import (
    MAX_VIEWS,
    MULTI_VIEW_TASKS,
    TEMPLATES,
    Modality,
    Task,
    TaskFamily,
    comparison_target,
    fill_template,
    format_region,
    join_targets,
)
from .tokens import DET_TOKEN, NA_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN
from .vocabulary import (
    ABDOMINAL_ORGANS,
    CHEST_ANATOMIES,
    CHEST_ORGANS,
    CHEST_PATHOLOGIES,
    DEFAULT_TARGETS,
    SEGMENTED_STRUCTURES,
    SKIN_LESION,
    SKIN_LESION_ABBREVIATIONS,
    SKIN_LESION_CLASSES,
)

if TYPE_CHECKING:
    from .analyzer import Analyzer, ChooserFactory
    from .checkpoint import build_model, load_checkpoint, save_checkpoint
    from .model import MedVersaModel
    from .processing import postprocess_mask_2d, preprocess_image, preprocess_volume, resize_nearest
    from .prompting import build_prompt_ids, embed_with_images
    from .scripted import scripted_chooser
    from .tokenizer import MedVersaTokenizer
    from .unet2d import ResNetUNet2d

#: Names that need torch, and the module that defines each (imported on first access, PEP 562).
_LAZY: dict[str, str] = {
    "Analyzer": "analyzer", "ChooserFactory": "analyzer",
    "build_model": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "MedVersaModel": "model",
    "postprocess_mask_2d": "processing", "preprocess_image": "processing", "preprocess_volume": "processing",
    "resize_nearest": "processing",
    "build_prompt_ids": "prompting", "embed_with_images": "prompting",
    "scripted_chooser": "scripted",
    "MedVersaTokenizer": "tokenizer",
    "ResNetUNet2d": "unet2d",
}

__all__ = [
    # running the model
    "Analyzer", "BUNDLED_CHECKPOINT", "ChooserFactory", "load_analyzer", "model_identity", "scripted_chooser",
    # what crosses the boundary
    "Answer", "Box", "ImageInput", "MAX_DETECTION_TARGETS", "Mask2D", "Mask3D", "TaskRequest",
    "PixelBox", "box_overlap",
    "Modality", "Task", "TaskFamily", "MAX_VIEWS", "MULTI_VIEW_TASKS",
    "ClinicalContext", "ContextFields", "Declaration", "context_fields_from", "render_context",
    # the one vocabulary of class phrases
    "ABDOMINAL_ORGANS", "CHEST_ANATOMIES", "CHEST_ORGANS", "CHEST_PATHOLOGIES", "DEFAULT_TARGETS",
    "SEGMENTED_STRUCTURES", "SKIN_LESION", "SKIN_LESION_ABBREVIATIONS", "SKIN_LESION_CLASSES",
    # prompts and targets as the model learned them (training)
    "DET_TOKEN", "NA_TOKEN", "SEG2D_TOKEN", "SEG3D_TOKEN", "TEMPLATES", "comparison_target", "fill_template",
    "format_region", "join_targets", "build_prompt_ids", "embed_with_images",
    # the model, its configuration and checkpoints (training)
    "GenerationConfig", "MedVersaConfig", "MedVersaModel", "MedVersaTokenizer", "ResNetUNet2d", "build_model",
    "create_config",
    "load_checkpoint", "save_checkpoint",
    "postprocess_mask_2d", "preprocess_image", "preprocess_volume", "resize_nearest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
