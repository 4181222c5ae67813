"""The types that cross the inference boundary: task requests in, answers out.

Plain dataclasses with numpy arrays; nothing here knows DICOM. ``source_id`` on
an image is an opaque string the caller (``dicom_mapping``) uses to map results
back to its source instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .tasks import TEMPLATES, Modality, Task, TaskFamily, comparison_target, fill_template, format_region, join_targets
from .tokens import DET_TOKEN, NA_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN
from .vocabulary import DEFAULT_TARGETS

#: The paper asks for at most nine detection classes in one request.
MAX_DETECTION_TARGETS = 9


@dataclass
class ImageInput:
    """One image as the model sees it.

    2D: display pixels ``[rows, cols]`` or ``[rows, cols, 3]`` (uint8, after the
    modality/VOI LUT). Volume: Hounsfield units ``[slices, rows, cols]``.
    """

    pixels: np.ndarray
    volume: bool = False
    source_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray):
            raise TypeError(f"pixels must be a numpy array, got {type(self.pixels).__name__}")
        if self.volume:
            if self.pixels.ndim != 3 or min(self.pixels.shape) < 1:
                raise ValueError(f"a volume must be [slices, rows, cols], got shape {self.pixels.shape}")
        elif not (self.pixels.ndim == 2 or (self.pixels.ndim == 3 and self.pixels.shape[-1] == 3)):
            raise ValueError(f"a 2D image must be [rows, cols] or [rows, cols, 3], got shape {self.pixels.shape}")
        if self.pixels.size == 0:
            raise ValueError("image has no pixels")

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1] if self.volume else self.pixels.shape[0])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2] if self.volume else self.pixels.shape[1])


@dataclass
class TaskRequest:
    """One request to MedVersa: a task on one or more images.

    Parameters
    ----------
    task, modality
        What to do and on what kind of image (CT uses the 3D encoder).
    images
        ``<img0>``, ``<img1>``, ... in order. For a longitudinal comparison the
        first ``num_current`` images are the current study, the rest the prior.
    question
        The request text for VQA, or a custom instruction that replaces the
        task's default template (it must mention the images as ``<imgN>``).
    context
        Clinical context (age, sex, indication), used by report generation and
        classification as the published model was trained.
    targets
        Classes to detect (several in one request) or segment (one mask each).
    region
        Region-of-interest captioning: ``(x0, y0, x1, y1)`` in pixels of image 0.
    """

    task: Task
    modality: Modality
    images: list[ImageInput]
    question: str | None = None
    context: str = ""
    targets: tuple[str, ...] = ()
    region: tuple[float, float, float, float] | None = None
    num_current: int | None = None
    request_id: str = ""
    #: Longitudinal comparison: the prior's date and description, for checkpoints trained with them.
    prior_details: str = ""

    def __post_init__(self) -> None:
        self.task = Task(self.task)
        self.modality = Modality(self.modality)
        if not self.images:
            raise ValueError("a request needs at least one image")
        volumes = [img.volume for img in self.images]
        if self.modality.is_volume and not all(volumes):
            raise ValueError("CT requests take volumes (ImageInput(volume=True))")
        if not self.modality.is_volume and any(volumes):
            raise ValueError(f"{self.modality.value} requests take 2D images, not volumes")
        if self.task is Task.ABDOMINAL_ORGAN_SEGMENTATION and not self.modality.is_volume:
            raise ValueError("abdominal organ segmentation runs on CT volumes")
        if self.task in (Task.CHEST_ORGAN_SEGMENTATION, Task.SKIN_LESION_SEGMENTATION) and self.modality.is_volume:
            raise ValueError(f"{self.task.value} runs on 2D images")
        if self.task is Task.VQA and not self.question:
            raise ValueError("a VQA request needs a question")
        if self.task is Task.REGION_CAPTIONING and self.region is None and not self.question:
            raise ValueError("region captioning needs a region (x0, y0, x1, y1) in pixels of image 0")
        if self.task is Task.LONGITUDINAL_COMPARISON:
            n = self.num_current
            if n is None or not 1 <= n < len(self.images):
                raise ValueError("a longitudinal comparison needs num_current images of the current study "
                                 f"and at least one prior image; got num_current={n} of {len(self.images)} images")
        self.targets = tuple(t.strip() for t in self.targets if t.strip()) or DEFAULT_TARGETS.get(self.task, ())
        if self.task.family is TaskFamily.DETECTION and len(self.targets) > MAX_DETECTION_TARGETS:
            raise ValueError(f"at most {MAX_DETECTION_TARGETS} detection classes per request, got {len(self.targets)}")

    @property
    def main_images(self) -> list[int]:
        n = self.num_current if self.task is Task.LONGITUDINAL_COMPARISON else len(self.images)
        return list(range(n or len(self.images)))

    def prompts(self) -> list[tuple[str, str]]:
        """(target label, instruction) pairs: segmentation asks one class per prompt."""
        if self.question:
            return [("", self.question)]
        main = self.main_images
        task = self.task
        template = TEMPLATES[task][0]
        if task.family is TaskFamily.SEGMENTATION:
            return [(t, fill_template(template, main, t)) for t in self.targets]
        if task.family is TaskFamily.DETECTION:
            return [("", fill_template(template, main, join_targets(list(self.targets))))]
        if task is Task.REGION_CAPTIONING:
            assert self.region is not None
            first = self.images[0]
            return [("", fill_template(template, main, format_region(self.region, first.cols, first.rows)))]
        if task is Task.LONGITUDINAL_COMPARISON:
            prior = comparison_target(list(range(len(main), len(self.images))), self.prior_details)
            return [("", fill_template(template, main, prior))]
        return [("", fill_template(template, main))]


@dataclass
class Box:
    """A detected box in pixels of image ``image_index`` (x0, y0 top-left; x1, y1 bottom-right)."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    image_index: int = 0


@dataclass
class Mask2D:
    label: str
    mask: np.ndarray  # bool [rows, cols] of the source image
    image_index: int = 0


@dataclass
class Mask3D:
    label: str
    mask: np.ndarray  # bool [slices, rows, cols] of the source volume
    image_index: int = 0


@dataclass
class Answer:
    """What MedVersa said and drew for one request."""

    request_id: str
    task: Task
    text: str
    boxes: list[Box] = field(default_factory=list)
    masks_2d: list[Mask2D] = field(default_factory=list)
    masks_3d: list[Mask3D] = field(default_factory=list)
    #: Classes the model answered with <N/A> (asked for, judged absent).
    absent: list[str] = field(default_factory=list)
    generated_tokens: int = 0
    #: False when generation hit max_new_tokens before the end symbol.
    complete: bool = True

    @property
    def plain_text(self) -> str:
        """The text without task tokens, for reports and SR text items."""
        text = self.text
        for token in (DET_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN):
            text = text.replace(token, "")
        text = text.replace(NA_TOKEN, "(absent)")
        return re.sub(r"\s+([.,;:])", r"\1", re.sub(r"[ \t]+", " ", text)).strip()
