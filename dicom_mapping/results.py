"""One analysed task with everything needed to write it back: the answer and its source references."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medversa.inference import Answer, Task

from .references import ImageRef, VolumeRef


@dataclass
class TaskResult:
    """The model's answer to one task, with ``<imgN>`` resolved to source references.

    ``images[i]`` is the source of ``<img{i}>`` (2D tasks); ``volume`` the source
    of a CT task. ``question`` is the text asked for VQA / region captioning.
    ``prior_study_uid`` is set for a longitudinal comparison.
    """

    answer: Answer
    images: list[ImageRef] = field(default_factory=list)
    volume: VolumeRef | None = None
    question: str | None = None
    prior_study_uid: str | None = None

    @property
    def task(self) -> Task:
        return self.answer.task


def pixel_area_mm2(mask: np.ndarray, ref: ImageRef) -> float | None:
    """Area of a 2D mask in mm^2 from the pixel spacing (None when the spacing is unknown)."""
    if ref.pixel_spacing is None:
        return None
    return float(mask.sum()) * ref.pixel_spacing[0] * ref.pixel_spacing[1]


def volume_ml(mask: np.ndarray, ref: VolumeRef) -> float:
    """Volume of a 3D mask in ml (voxel count x row x column spacing x slice spacing)."""
    voxel_mm3 = ref.pixel_spacing[0] * ref.pixel_spacing[1] * ref.slice_spacing
    return float(mask.sum()) * voxel_mm3 / 1000.0
