"""One study through the model: DICOM in -> task requests -> MedVersa -> SR, SEG, overlays.

The worker and ``medversa infer`` share this function. It decides which tasks fit
the study (or takes the routing rule's list), builds the task requests with
``<imgN>`` resolved to source references, runs the :class:`Analyzer` once for the
whole study (batched by task and modality), and builds the result objects with
UIDs derived from a job key, so re-running the same job yields the same objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from medversa.dicom_mapping.identity import AlgorithmInfo, derive_uid
from medversa.dicom_mapping.inputs import (
    longitudinal_images,
    order_chest_views,
    prepare_study,
)
from medversa.dicom_mapping.ko import build_key_objects
from medversa.dicom_mapping.pr import build_presentation_state
from medversa.dicom_mapping.references import (
    PreparedImage,
    PreparedVolume,
    SeriesKind,
    StudyInputs,
    View,
)
from medversa.dicom_mapping.results import TaskResult
from medversa.dicom_mapping.routing_table import DEFAULT_TASKS, fits
from medversa.dicom_mapping.sc import build_secondary_capture
from medversa.dicom_mapping.seg import build_segmentation
from medversa.dicom_mapping.sr import SegReference, build_sr, build_text_report
from medversa.inference.analyzer import Analyzer, ChooserFactory
from medversa.inference.context import ContextFields, render_context
from medversa.inference.schema import ImageInput, TaskRequest
from medversa.inference.tasks import Modality, Task
from pydicom import Dataset

LOGGER = logging.getLogger(__name__)

_MODALITY = {SeriesKind.CHEST_RADIOGRAPH: Modality.CXR, SeriesKind.DERMOSCOPY: Modality.DERM,
             SeriesKind.ABDOMINAL_CT: Modality.CT, SeriesKind.CT: Modality.CT}


@dataclass
class PipelineOptions:
    """What to run and write for one study."""

    algorithm: AlgorithmInfo = field(default_factory=AlgorithmInfo)
    #: Tasks to run (None: the defaults for each series kind that fit).
    tasks: tuple[Task, ...] | None = None
    #: A radiologist's question (VQA) about the first chest image / dermoscopy image.
    ask: str | None = None
    #: Region-of-interest captioning: (x0, y0, x1, y1) in pixels of the first 2D image.
    region: tuple[float, float, float, float] | None = None
    #: Clinical context given by hand (``infer --context``); empty: written from the headers.
    clinical_context: str = ""
    #: Context fields per modality (the checkpoint's declared ones; None: every field).
    context_fields: ContextFields | None = None
    #: Tasks the checkpoint declares (None: all); routed tasks outside it are not run (noted once).
    declared_tasks: tuple[Task, ...] | None = None
    #: Name the prior's date and description in the comparison prompt (checkpoints trained so).
    prior_details: bool = False
    #: Standing questions of the routing rules, asked (VQA) of the study's first frontal/skin image.
    questions: tuple[str, ...] = ()
    presentation_states: bool = True
    #: Burned-in Secondary Capture per image with results (on by default for radiographs).
    burned_in: bool = True
    burned_in_for_colour: bool = False
    key_objects: bool = False
    #: Identifies the job (and its version): result UIDs derive from it.
    job_key: str = ""


@dataclass
class WrittenObject:
    kind: str  # "SR", "SR-TEXT" (the SR's text report, TID 2000), "SEG", "PR", "SC", "KO"
    dataset: Dataset


@dataclass
class StudyOutput:
    study_instance_uid: str
    objects: list[WrittenObject]
    results: list[TaskResult]
    inputs: StudyInputs
    notes: list[str] = field(default_factory=list)


@dataclass
class _Planned:
    request: TaskRequest
    images: list[PreparedImage] = field(default_factory=list)
    volume: PreparedVolume | None = None
    prior_study_uid: str | None = None


def _wanted(kind: SeriesKind, options: PipelineOptions) -> tuple[Task, ...]:
    """The tasks to run on a kind: the routed (else default) ones that fit it and the model declares."""
    tasks = DEFAULT_TASKS[kind] if options.tasks is None else tuple(t for t in options.tasks if fits(t, kind))
    return tuple(t for t in tasks if options.declared_tasks is None or t in options.declared_tasks)


def _undeclared(inputs: StudyInputs, options: PipelineOptions) -> list[str]:
    """Notes for routed (or default) tasks the checkpoint was not trained for (said once per study)."""
    if options.declared_tasks is None:
        return []
    kinds = {i.kind for i in inputs.images} | {v.kind for v in inputs.volumes}
    requested = options.tasks if options.tasks is not None else tuple(
        dict.fromkeys(t for kind in SeriesKind if kind in kinds for t in DEFAULT_TASKS[kind]))
    left_out = [t.value for t in requested if t not in options.declared_tasks and t is not Task.VQA]
    if not left_out:
        return []
    return [f"not run: {', '.join(left_out)} (the model does not declare these tasks; it was trained for "
            f"{', '.join(t.value for t in options.declared_tasks)})"]


def _context(inputs: StudyInputs, images: list[PreparedImage], modality: Modality, options: PipelineOptions) -> str:
    """The request's clinical context: given by hand, else the headers rendered as training wrote them."""
    if options.clinical_context:
        return options.clinical_context
    views = ", ".join(dict.fromkeys(i.projection for i in images if i.projection)) or None
    return render_context(replace(inputs.clinical, view=views), modality, options.context_fields)


def _prior_details(prior: StudyInputs) -> str:
    """'2024-03-02, CHEST PA' from the prior's Study Date and Study Description."""
    date = prior.study_date
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return ", ".join(p for p in (date, prior.study_description) if p)


def _image_input(img: PreparedImage) -> ImageInput:
    return ImageInput(img.pixels, source_id=img.ref.sop_instance_uid)


def plan(inputs: StudyInputs, options: PipelineOptions, prior: StudyInputs | None = None) -> tuple[list[_Planned], list[str]]:
    """The task requests for a study, and notes on what was skipped and why."""
    planned: list[_Planned] = []
    notes: list[str] = _undeclared(inputs, options)
    chest = order_chest_views([i for i in inputs.images if i.kind is SeriesKind.CHEST_RADIOGRAPH])
    frontal = [i for i in chest if i.view is not View.LATERAL] or chest[:1]
    if chest:
        tasks = _wanted(SeriesKind.CHEST_RADIOGRAPH, options)
        views = chest[:4]  # multi-view: all views for language tasks (paper Fig. 1)
        context = _context(inputs, views, Modality.CXR, options)
        for task in tasks:
            if task in (Task.REPORT_FINDINGS, Task.REPORT_IMPRESSION, Task.REPORT_FULL,
                        Task.CHEST_PATHOLOGY_CLASSIFICATION):
                planned.append(_Planned(TaskRequest(task, Modality.CXR, [_image_input(i) for i in views],
                                                    context=context), views))
            elif task in (Task.CHEST_ORGAN_SEGMENTATION, Task.PATHOLOGY_DETECTION, Task.ANATOMY_DETECTION):
                for img in frontal:
                    planned.append(_Planned(TaskRequest(task, Modality.CXR, [_image_input(img)]), [img]))
            elif task is Task.LONGITUDINAL_COMPARISON:
                if prior is None:
                    notes.append("longitudinal comparison skipped: no prior study")
                    continue
                try:
                    images, n_current = longitudinal_images(inputs, prior)
                except ValueError as exc:
                    notes.append(f"longitudinal comparison skipped: {exc}")
                    continue
                details = _prior_details(prior) if options.prior_details else ""
                planned.append(_Planned(TaskRequest(task, Modality.CXR, [_image_input(i) for i in images],
                                                    num_current=n_current, prior_details=details),
                                        images, None, prior.study_instance_uid))
    derm = [i for i in inputs.images if i.kind is SeriesKind.DERMOSCOPY]
    for img in derm:
        for task in _wanted(SeriesKind.DERMOSCOPY, options):
            if task in (Task.SKIN_LESION_CLASSIFICATION, Task.SKIN_LESION_SEGMENTATION):
                planned.append(_Planned(TaskRequest(task, Modality.DERM, [_image_input(img)],
                                                    context=_context(inputs, [img], Modality.DERM, options)),
                                        [img]))
    for vol in inputs.volumes:
        tasks = _wanted(vol.kind, options)
        if not tasks and vol.kind is SeriesKind.CT:
            notes.append(f"CT series {vol.ref.series_instance_uid}: no abdominal coverage, no task applies")
        for task in tasks:
            if task is Task.ABDOMINAL_ORGAN_SEGMENTATION:
                planned.append(_Planned(TaskRequest(task, Modality.CT, [ImageInput(vol.hu, volume=True,
                                                    source_id=vol.ref.series_instance_uid)]), [], vol))
    first_2d = (frontal or derm)[:1]
    questions = list(dict.fromkeys(([options.ask] if options.ask else []) + list(options.questions)))
    if questions and options.declared_tasks is not None and Task.VQA not in options.declared_tasks:
        notes.append(f"{len(questions)} question(s) not asked: the model does not declare vqa")
    elif questions and not first_2d:
        notes.append("question skipped: the study has no chest radiograph or dermoscopy image")
    elif questions:
        img = first_2d[0]
        modality = Modality.CXR if img.kind is SeriesKind.CHEST_RADIOGRAPH else Modality.DERM
        for question in questions:
            planned.append(_Planned(TaskRequest(Task.VQA, modality, [_image_input(img)],
                                                question=_with_image_tag(question)), [img]))
    if options.region:
        if first_2d:
            img = first_2d[0]
            modality = Modality.CXR if img.kind is SeriesKind.CHEST_RADIOGRAPH else Modality.DERM
            planned.append(_Planned(TaskRequest(Task.REGION_CAPTIONING, modality, [_image_input(img)],
                                                region=options.region), [img]))
        else:
            notes.append("region caption skipped: the study has no 2D image")
    for skipped in inputs.skipped:
        notes.append(f"skipped {skipped.sop_instance_uid or skipped.series_instance_uid}: {skipped.reason}")
    return planned, notes


def _with_image_tag(question: str) -> str:
    return question if "<img" in question else f"{question.rstrip()} <img0>"


def analyze_study(
    datasets: list[Dataset],
    analyzer: Analyzer,
    options: PipelineOptions,
    prior_datasets: list[Dataset] | None = None,
    choose_for: ChooserFactory | None = None,
) -> StudyOutput:
    """Run the fitting tasks on one study and build its result objects."""
    inputs = prepare_study(datasets)
    prior = prepare_study(prior_datasets) if prior_datasets else None
    planned, notes = plan(inputs, options, prior)
    for note in notes:
        LOGGER.info("study %s: %s", inputs.study_instance_uid, note)
    if not planned:
        return StudyOutput(inputs.study_instance_uid, [], [], inputs, notes)
    answers = analyzer.run([p.request for p in planned], choose_for=choose_for)
    results = [
        TaskResult(answer, [i.ref for i in p.images], p.volume.ref if p.volume else None,
                   p.request.question or (p.request.prompts()[0][1] if p.request.task is Task.REGION_CAPTIONING else None),
                   p.prior_study_uid)
        for p, answer in zip(planned, answers)
    ]
    objects = _build_objects(datasets, prior_datasets or [], planned, results, options, inputs)
    return StudyOutput(inputs.study_instance_uid, objects, results, inputs, notes)


def _build_objects(datasets: list[Dataset], prior: list[Dataset], planned: list[_Planned], results: list[TaskResult],
                   options: PipelineOptions, inputs: StudyInputs) -> list[WrittenObject]:
    alg = options.algorithm
    key = options.job_key or f"{inputs.study_instance_uid}:{alg.model_id}"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    series = {kind: derive_uid(alg.org_root, key, "series", kind) for kind in ("SR", "SEG", "PR", "SC", "KO")}
    counters: dict[str, int] = {}

    def next_uid(kind: str) -> tuple[str, int]:
        counters[kind] = counters.get(kind, 0) + 1
        return derive_uid(alg.org_root, key, kind, str(counters[kind])), counters[kind]

    objects: list[WrittenObject] = []
    seg_refs: dict[tuple[int, str], SegReference] = {}
    # SEG: one per segmented 2D source image / CT volume, all segments of all tasks on it.
    groups: dict[str, list[tuple[int, str, np.ndarray]]] = {}
    sources_of: dict[str, tuple[list[Dataset], object]] = {}
    for index, (p, result) in enumerate(zip(planned, results)):
        for m in result.answer.masks_2d:
            ref = result.images[m.image_index]
            groups.setdefault(ref.sop_instance_uid + f":{ref.frame or 0}", []).append((index, m.label, m.mask))
            sources_of[ref.sop_instance_uid + f":{ref.frame or 0}"] = ([by_uid[ref.sop_instance_uid]], ref)
        for m in result.answer.masks_3d:
            vref = result.volume
            assert vref is not None
            groups.setdefault(vref.series_instance_uid, []).append((index, m.label, m.mask))
            slices = [by_uid[uid] for uid in dict.fromkeys(vref.sop_instance_uids)]
            sources_of[vref.series_instance_uid] = (slices, vref)
    for group_key, items in groups.items():
        sources, ref = sources_of[group_key]
        uid, number = next_uid("SEG")
        seg = build_segmentation(sources, [(label, mask) for _, label, mask in items], ref, alg,  # type: ignore[arg-type]
                                 series["SEG"], uid, instance_number=number)
        if seg is None:
            continue
        objects.append(WrittenObject("SEG", seg.dataset))
        for index, label, _ in items:
            seg_refs[(index, label)] = SegReference(seg, ref)  # type: ignore[arg-type]

    evidence = list({str(ds.SOPInstanceUID): ds for p in planned for ds in _sources(p, by_uid)}.values())
    evidence += [ds for ds in prior if any(str(ds.SOPInstanceUID) == i.ref.sop_instance_uid
                                             for p in planned for i in p.images)]
    evidence += [o.dataset for o in objects]
    uid, number = next_uid("SR")
    sr = build_sr(results, evidence, alg, series["SR"], uid, seg_refs, instance_number=number)
    objects.insert(0, WrittenObject("SR", sr))
    # The same results as a text report (TID 2000), in a series of its own: viewers show text SRs.
    uid, number = next_uid("SR-text")
    text_series = derive_uid(alg.org_root, key, "series", "SR-text")
    objects.insert(1, WrittenObject("SR-TEXT", build_text_report(sr, alg, text_series, uid, instance_number=number)))

    # Overlays per 2D source image of the current study that has boxes or masks.
    drawn: dict[str, tuple[PreparedImage, list]] = {}
    for p, result in zip(planned, results):
        for k, img in enumerate(p.images):
            if img.ref.study_instance_uid != inputs.study_instance_uid:
                continue
            has = any(b.image_index == k for b in result.answer.boxes) or any(m.image_index == k for m in result.answer.masks_2d)
            if has:
                drawn.setdefault(img.ref.sop_instance_uid + f":{img.ref.frame or 0}", (img, []))[1].append((k, result.answer))
    positives: list[Dataset] = []
    for img, answers in drawn.values():
        source = by_uid[img.ref.sop_instance_uid]
        local = [_reindexed(answer, k) for k, answer in answers]
        positives.append(source)
        if options.presentation_states:
            uid, number = next_uid("PR")
            pr = build_presentation_state(source, img.ref, local, alg, series["PR"], uid, 0, instance_number=number)
            if pr is not None:
                objects.append(WrittenObject("PR", pr))
        colour = img.pixels.ndim == 3
        if options.burned_in and (not colour or options.burned_in_for_colour):
            uid, number = next_uid("SC")
            sc = build_secondary_capture(source, img.ref, img.pixels, local, alg, series["SC"], uid, 0,
                                         instance_number=number)
            if sc is not None:
                objects.append(WrittenObject("SC", sc))
    if options.key_objects:
        uid, number = next_uid("KO")
        ko = build_key_objects(list({str(d.SOPInstanceUID): d for d in positives}.values()), sr, alg, series["KO"],
                               uid, instance_number=number)
        if ko is not None:
            objects.append(WrittenObject("KO", ko))
    return objects


def _sources(p: _Planned, by_uid: dict[str, Dataset]) -> list[Dataset]:
    uids = [i.ref.sop_instance_uid for i in p.images] + (list(p.volume.ref.sop_instance_uids) if p.volume else [])
    return [by_uid[u] for u in uids if u in by_uid]


def _reindexed(answer, k: int):
    """The answer's boxes and masks on image ``k`` as if it were image 0 (one image per overlay)."""
    from dataclasses import replace

    return replace(answer,
                   boxes=[replace(b, image_index=0) for b in answer.boxes if b.image_index == k],
                   masks_2d=[replace(m, image_index=0) for m in answer.masks_2d if m.image_index == k])
