"""DICOM in -> model inputs, model outputs -> SR / SEG / presentation states, and what the node uses of it.

The node reads received instances with :func:`prepare_study`, plans the model's requests
(:func:`plan_study`) and turns the answers into the study's result objects with
:func:`build_study_objects`; the interactive path reads annotations and writes answer SRs.

Reading (pydicom only) imports at once; the result builders, which need highdicom (and, through
it, scipy), load on first use (PEP 562), so the SCP and the command line start without them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import header
from .annotations import (
    ANNOTATION_CLASSES,
    ImageReference,
    Region,
    bounding_box,
    in_pixels,
    own_result_reason,
    read_annotation,
)
from .header import truncation
from .inputs import prepare_study
from .orientation import AS_STORED, Reorientation
from .pixels import PixelDataError, check_pixel_data
from .references import SeriesKind, StudyInputs
from .results import TaskResult
from .routing_table import DEFAULT_RULE_NAMES, DEFAULT_TASKS, INTERACTIVE_TASKS, MODALITIES, fits, kinds_for
from .series import Classification, classify

if TYPE_CHECKING:
    from .answer_sr import RegionAnswer, build_answer_sr, read_answers
    from .identity import AlgorithmInfo, derive_uid
    from .plan import PlannedRequest, StudyOptions, plan_study, with_image_tag
    from .study_objects import ObjectKind, WrittenObject, answer_uids, build_answer_object, build_study_objects

#: Names whose modules need highdicom, and the module that defines each (imported on first access).
_LAZY: dict[str, str] = {
    "RegionAnswer": "answer_sr", "build_answer_sr": "answer_sr", "read_answers": "answer_sr",
    "AlgorithmInfo": "identity", "derive_uid": "identity",
    "StudyOptions": "plan", "PlannedRequest": "plan", "plan_study": "plan", "with_image_tag": "plan",
    "ObjectKind": "study_objects", "WrittenObject": "study_objects", "build_study_objects": "study_objects",
    "answer_uids": "study_objects", "build_answer_object": "study_objects",
}

__all__ = [
    # a study's way: prepare -> plan -> (the model) -> build
    "StudyInputs", "SeriesKind", "prepare_study", "classify", "Classification", "check_pixel_data",
    "PixelDataError", "truncation",
    "Reorientation", "AS_STORED",
    "StudyOptions", "plan_study", "PlannedRequest", "TaskResult", "AlgorithmInfo", "derive_uid", "ObjectKind",
    "WrittenObject", "build_study_objects",
    # the routing table
    "DEFAULT_RULE_NAMES", "DEFAULT_TASKS", "INTERACTIVE_TASKS", "MODALITIES", "fits", "kinds_for",
    # reader annotations and the answers to them
    "ANNOTATION_CLASSES", "ImageReference", "Region", "bounding_box", "in_pixels", "own_result_reason",
    "read_annotation", "with_image_tag", "RegionAnswer", "answer_uids", "build_answer_object", "build_answer_sr",
    "read_answers",
    # header readers (``header.text(ds, "PatientID")``, ...): every attribute read the same way
    "header",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
