"""Records -> instruction samples, as the paper builds them (Methods; Table 5 templates).

A :class:`Sample` is one prompt and its target answer, with the images already
loaded and augmented and, for each task token in the answer, its box or mask.
Every random choice (template, detection classes, crop, flip) comes from the
``rng`` the caller passes, so the sampler can rebuild any step exactly.

Answers read as the analyzer parses them (``inference/labels.py``):
- segmentation: "The segmentation mask of {class} is <2DSEG>" (or <3DSEG>), one class per prompt;
- detection: up to nine classes in random order, "{class} <DET>" per box or "{class} <N/A>";
- classification: the diagnosis names ("no finding" when none);
- reports: the findings, the impression, or both ("full report").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from medversa.inference import (
    DET_TOKEN,
    MAX_DETECTION_TARGETS,
    NA_TOKEN,
    SEG2D_TOKEN,
    SEG3D_TOKEN,
    TEMPLATES,
    ClinicalContext,
    ContextFields,
    Modality,
    Task,
    comparison_target,
    fill_template,
    format_region,
    join_targets,
    render_context,
)

from .augment import flip_volume, hflip, random_resized_crop, swap_sides
from .records import (
    ClassificationRecord,
    ComparisonRecord,
    DetectionRecord,
    Record,
    RegionCaptionRecord,
    ReportRecord,
    SegmentationRecord,
    TextRecord,
    VQARecord,
)

NO_FINDING = "no finding"
#: How a text-only report (no image in the dataset) is referred to in its instruction.
TEXT_ONLY_SUBJECT = "the chest radiograph"

SEGMENTATION_TASK = {
    Modality.CXR: Task.CHEST_ORGAN_SEGMENTATION,
    Modality.DERM: Task.SKIN_LESION_SEGMENTATION,
    Modality.CT: Task.ABDOMINAL_ORGAN_SEGMENTATION,
}


@dataclass
class Sample:
    """One instruction-tuning example, ready for tokenisation."""

    task: Task
    modality: Modality
    question: str
    answer: str
    context: str = ""
    images: list[np.ndarray] = field(default_factory=list)  # display uint8 2D, or HU [slices, rows, cols]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # normalised, per <DET>
    masks: list[np.ndarray] = field(default_factory=list)  # bool, per <2DSEG>/<3DSEG>, source size
    #: The structure each task token stands for, in answer order (the routing codes' keys).
    structures: list[str] = field(default_factory=list)
    record_id: str = ""


def tasks_for(record: Record) -> list[Task]:
    """The tasks a record can be a sample of (the sampler's pools)."""
    if isinstance(record, (ReportRecord, TextRecord)):
        tasks = []
        if record.findings:
            tasks.append(Task.REPORT_FINDINGS)
        if record.impression:
            tasks.append(Task.REPORT_IMPRESSION)
        if record.findings and record.impression:
            tasks.append(Task.REPORT_FULL)
        return tasks
    if isinstance(record, ClassificationRecord):
        return [Task.SKIN_LESION_CLASSIFICATION if record.modality is Modality.DERM
                else Task.CHEST_PATHOLOGY_CLASSIFICATION]
    if isinstance(record, DetectionRecord):
        return [Task.PATHOLOGY_DETECTION if record.kind == "pathology" else Task.ANATOMY_DETECTION]
    if isinstance(record, SegmentationRecord):
        return [SEGMENTATION_TASK[record.modality]] if record.masks else []
    if isinstance(record, VQARecord):
        return [Task.VQA]
    if isinstance(record, RegionCaptionRecord):
        return [Task.REGION_CAPTIONING]
    if isinstance(record, ComparisonRecord):
        return [Task.LONGITUDINAL_COMPARISON]
    raise TypeError(f"no tasks for a {type(record).__name__}")


def _template(task: Task, rng: np.random.Generator) -> str:
    options = TEMPLATES[task]
    return options[int(rng.integers(len(options)))]


def _crop_all(images: list[np.ndarray], rng: np.random.Generator, augment: bool) -> list[np.ndarray]:
    return [random_resized_crop(img, rng) if augment else img for img in images]


def build_sample(record: Record, task: Task, rng: np.random.Generator, augment: bool = True,
                 context_fields: ContextFields | None = None, structure: str | None = None,
                 detection_all_targets: float = 0.0, context_dropout: float = 0.0) -> Sample:
    """One sample of ``task`` from ``record``; ``augment=False`` gives the un-augmented view.

    The record's clinical context is written by :func:`render_context` with ``context_fields``
    (the recipe's; None: every field), the function the node uses on DICOM headers. ``structure``
    asks a segmentation record for that structure (balanced sampling) instead of one drawn at random;
    ``detection_all_targets`` is the share of detection samples asking for every candidate class;
    ``context_dropout`` the chance that each context field is left out (:func:`drop_context_fields`).
    """
    if isinstance(record, TextRecord):
        return _report(task, record.findings, record.impression, "", [], rng, record.record_id)
    if isinstance(record, ReportRecord):
        images = _crop_all([img.load() for img in record.images], rng, augment)
        context = _context_text(record, rng, context_fields, context_dropout)
        return _report(task, record.findings, record.impression, context, images, rng, record.record_id)
    if isinstance(record, ClassificationRecord):
        answer = join_targets(list(record.labels)) or NO_FINDING
        images = _crop_all([record.image.load()], rng, augment)
        return Sample(task, record.modality, fill_template(_template(task, rng), [0]), answer,
                      _context_text(record, rng, context_fields, context_dropout), images,
                      record_id=record.record_id)
    if isinstance(record, DetectionRecord):
        return _detection(record, task, rng, detection_all_targets)
    if isinstance(record, SegmentationRecord):
        return _segmentation(record, task, rng, augment, structure)
    if isinstance(record, VQARecord):
        images = _crop_all([img.load() for img in record.images], rng, augment)
        return Sample(task, record.modality, record.question, record.answer,
                      images=images, record_id=record.record_id)
    if isinstance(record, RegionCaptionRecord):
        region = format_region(record.region, record.width, record.height)
        question = fill_template(_template(task, rng), [0], region)
        return Sample(task, record.modality, question, record.caption, images=[record.image.load()],
                      record_id=record.record_id)
    if isinstance(record, ComparisonRecord):
        current = [img.load() for img in record.current]
        prior = [img.load() for img in record.prior]
        main = list(range(len(current)))
        prior_tags = comparison_target(list(range(len(current), len(current) + len(prior))))
        question = (record.question if record.question
                    else fill_template(_template(task, rng), main, prior_tags))
        return Sample(task, record.modality, question, record.answer,
                      images=_crop_all(current + prior, rng, augment), record_id=record.record_id)
    raise TypeError(f"cannot build a sample from a {type(record).__name__}")


def drop_context_fields(context: ClinicalContext | None, rng: np.random.Generator,
                        chance: float) -> ClinicalContext | None:
    """``context`` with each field left out (None) with probability ``chance``.

    A hospital's DICOM often lacks View Position, Patient's Sex or Age (anonymised or minimal
    headers); a model that only ever saw complete context learns to read the modality off it. At
    ``chance`` 0 nothing is drawn from ``rng``, so earlier recipes' samples stay exactly as they were.
    """
    if context is None or chance <= 0.0:
        return context
    names = [f.name for f in dataclasses.fields(context)]
    dropped = rng.random(len(names)) < chance
    return dataclasses.replace(context, **{name: None for name, drop in zip(names, dropped, strict=True) if drop})


def _context_text(record: ReportRecord | ClassificationRecord, rng: np.random.Generator,
                  fields: ContextFields | None, dropout: float) -> str:
    """A sample's ``<context>`` text: the record's context, fields left out at ``dropout``, as the node writes it."""
    return render_context(drop_context_fields(record.context, rng, dropout), record.modality, fields)


def _report(task: Task, findings: str, impression: str, context: str, images: list[np.ndarray],
            rng: np.random.Generator, record_id: str) -> Sample:
    if task is Task.REPORT_FINDINGS:
        answer = findings
    elif task is Task.REPORT_IMPRESSION:
        answer = impression
    elif task is Task.REPORT_FULL:
        answer = f"Findings: {findings} Impression: {impression}"
    else:
        raise ValueError(f"{task.value} is not a report task")
    template = _template(task, rng)
    if images:
        question = fill_template(template, list(range(len(images))))
    else:
        question = template.replace("_*_", TEXT_ONLY_SUBJECT)
    return Sample(task, Modality.CXR, question, answer, context, images, record_id=record_id)


def _detection(record: DetectionRecord, task: Task, rng: np.random.Generator, all_targets: float = 0.0) -> Sample:
    """Up to nine classes in random order, each answered with its boxes or <N/A> (no crop: boxes stay put).

    With ``all_targets`` > 0 that share of samples asks for every candidate (up to nine): a small
    LLM otherwise learns to stop after the first class asked (the answer's length is the one thing
    it must read from the question's list). 0 draws nothing extra: earlier runs' samples are unchanged.
    """
    candidates = list(dict.fromkeys([*record.candidates, *record.boxes]))
    most = min(MAX_DETECTION_TARGETS, len(candidates))
    if all_targets > 0 and rng.random() < all_targets:
        count = most
    else:
        count = int(rng.integers(1, most + 1))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:count]]
    parts, boxes, structures = [], [], []
    for name in chosen:
        found = record.boxes.get(name, [])
        if not found:
            parts.append(f"{name} {NA_TOKEN}")
        for x0, y0, x1, y1 in found:
            parts.append(f"{name} {DET_TOKEN}")
            boxes.append((x0 / record.width, y0 / record.height, x1 / record.width, y1 / record.height))
            structures.append(name)
    question = fill_template(_template(task, rng), [0], join_targets(chosen))
    return Sample(task, record.modality, question, ", ".join(parts), images=[record.image.load()],
                  boxes=boxes, structures=structures, record_id=record.record_id)


def _segmentation(record: SegmentationRecord, task: Task, rng: np.random.Generator, augment: bool,
                  structure: str | None = None) -> Sample:
    """One structure per prompt, as the analyzer asks; flips as the paper augments."""
    names = sorted(record.masks)
    if structure is not None and structure not in record.masks:
        raise ValueError(f"{record.source} {record.record_id} has no mask of {structure!r}; it has {names}")
    pick = names[int(rng.integers(len(names)))]  # drawn either way: the rng stream stays the same
    name = structure if structure is not None else pick
    image = record.image.load()
    mask = record.masks[name].load()
    volumetric = record.modality.is_volume
    if mask.shape != image.shape[: mask.ndim]:
        raise ValueError(f"{record.source} {record.record_id}: mask {name!r} has shape {mask.shape}, "
                         f"image {image.shape}")
    if augment and rng.random() < 0.5:
        if volumetric:
            image, mask = flip_volume(image, mask, int(rng.integers(3)))
        else:
            image, mask = hflip(image), hflip(mask)
            if record.modality is Modality.CXR:
                name = swap_sides(name)
    token = SEG3D_TOKEN if volumetric else SEG2D_TOKEN
    question = fill_template(_template(task, rng), [0], name)
    return Sample(task, record.modality, question, f"The segmentation mask of {name} is {token}",
                  images=[image], masks=[mask], structures=[name], record_id=record.record_id)
