"""Which tasks run on which prepared images of a study: the model's task requests, and why others did not run.

Planning is the DICOM side's job: it knows the series kinds, the chest views, the prior study and
the routing table (:mod:`.routing_table`, the one place the defaults live). Each request goes out
with the images it was made from, so an answer's ``<imgN>`` resolves back to source instances
(:meth:`PlannedRequest.result`). The prompt's clinical context is rendered by the same function
that wrote the training prompts (:func:`medversa.inference.clinical_context.render_context`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medversa.inference import (
    MAX_VIEWS,
    MULTI_VIEW_TASKS,
    Answer,
    ContextFields,
    ImageInput,
    Modality,
    Task,
    TaskRequest,
    render_context,
)

from .identity import AlgorithmInfo
from .inputs import longitudinal_images, order_chest_views
from .references import PreparedImage, PreparedVolume, SeriesKind, StudyInputs, View
from .results import TaskResult
from .routing_table import DEFAULT_TASKS, fits

#: Tasks that run on each frontal chest view alone (their boxes and masks belong to one image).
_PER_FRONTAL = (Task.CHEST_ORGAN_SEGMENTATION, Task.PATHOLOGY_DETECTION, Task.ANATOMY_DETECTION)


@dataclass
class StudyOptions:
    """What to run on one study and which result objects to write for it (planning and building read it)."""

    algorithm: AlgorithmInfo = field(default_factory=AlgorithmInfo)
    #: Tasks to run (None: the routing table's defaults for each series kind that fit).
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
    #: Chest views per report/classification request (the checkpoint's declared number; None: up to four).
    views_per_request: int | None = None
    #: Standing questions of the routing rules, asked (VQA) of the study's first frontal/skin image.
    questions: tuple[str, ...] = ()
    presentation_states: bool = True
    #: Burned-in Secondary Capture per image with results (on by default for radiographs).
    burned_in: bool = True
    burned_in_for_colour: bool = False
    key_objects: bool = False
    #: With no result at all, an SR still names the films the node was sent and did not read (and why).
    not_analysed_notice: bool = True
    #: Identifies the job (and its version): result UIDs derive from it.
    job_key: str = ""


@dataclass
class PlannedRequest:
    """One task request and what it was made from: ``images[i]`` is its ``<img{i}>``, or a CT ``volume``."""

    request: TaskRequest
    images: list[PreparedImage] = field(default_factory=list)
    volume: PreparedVolume | None = None
    #: Set for a longitudinal comparison: the prior study the request's earlier images come from.
    prior_study_uid: str | None = None

    def result(self, answer: Answer) -> TaskResult:
        """The model's answer to this request with its images resolved to source references.

        Boxes and masks come back on each source image's stored pixel grid (a film the model read
        turned, :mod:`.orientation`, is turned back), as the result objects reference them.
        """
        # Region captioning: its prompt is what was asked of the region.
        captioning = self.request.task is Task.REGION_CAPTIONING
        question = self.request.question or (self.request.prompts()[0][1] if captioning else None)
        for index, img in enumerate(self.images):
            answer = img.orientation.answer_to_stored(answer, index, img.ref.rows, img.ref.cols)
        return TaskResult(answer, [i.ref for i in self.images], self.volume.ref if self.volume else None,
                          question, self.prior_study_uid)


def with_image_tag(question: str) -> str:
    """A reader's question as the model is asked it: about ``<img0>`` unless it names an image itself."""
    return question if "<img" in question else f"{question.rstrip()} <img0>"


def _wanted(kind: SeriesKind, options: StudyOptions) -> tuple[Task, ...]:
    """The tasks to run on a kind: the routed (else default) ones that fit it and the model declares."""
    tasks = DEFAULT_TASKS[kind] if options.tasks is None else tuple(t for t in options.tasks if fits(t, kind))
    return tuple(t for t in tasks if options.declared_tasks is None or t in options.declared_tasks)


def _undeclared(inputs: StudyInputs, options: StudyOptions) -> list[str]:
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


def _context(inputs: StudyInputs, images: list[PreparedImage], modality: Modality, options: StudyOptions) -> str:
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
    return ImageInput(img.model_pixels(), source_id=img.ref.sop_instance_uid)


#: The model's modality for each kind of 2D image it reads (a reader's question or region goes to one of these).
MODALITY_2D: dict[SeriesKind, Modality] = {SeriesKind.CHEST_RADIOGRAPH: Modality.CXR,
                                           SeriesKind.DERMOSCOPY: Modality.DERM}


def _modality_2d(img: PreparedImage) -> Modality:
    return MODALITY_2D[img.kind]


def plan_study(inputs: StudyInputs, options: StudyOptions,
               prior: StudyInputs | None = None) -> tuple[list[PlannedRequest], list[str]]:
    """The task requests for a study, and notes on what was skipped and why."""
    planned: list[PlannedRequest] = []
    notes: list[str] = _undeclared(inputs, options)
    chest = order_chest_views([i for i in inputs.images if i.kind is SeriesKind.CHEST_RADIOGRAPH])
    frontal = [i for i in chest if i.view is not View.LATERAL] or chest[:1]
    if chest:
        views = chest[:min(MAX_VIEWS, options.views_per_request or MAX_VIEWS)]
        context = _context(inputs, views, Modality.CXR, options)
        wanted = _wanted(SeriesKind.CHEST_RADIOGRAPH, options)
        if len(views) < min(len(chest), MAX_VIEWS) and any(t in MULTI_VIEW_TASKS for t in wanted):
            notes.append(f"reports and classes read {len(views)} of the study's {len(chest)} chest views (frontal "
                         f"first): the model was trained on {options.views_per_request} per request")
        for task in wanted:
            if task in MULTI_VIEW_TASKS:
                planned.append(PlannedRequest(TaskRequest(task, Modality.CXR, [_image_input(i) for i in views],
                                                          context=context), views))
            elif task in _PER_FRONTAL:
                for img in frontal:
                    planned.append(PlannedRequest(TaskRequest(task, Modality.CXR, [_image_input(img)]), [img]))
            elif task is Task.LONGITUDINAL_COMPARISON:
                comparison = _comparison(inputs, prior, options, notes)
                if comparison is not None:
                    planned.append(comparison)
    derm = [i for i in inputs.images if i.kind is SeriesKind.DERMOSCOPY]
    for img in derm:
        for task in _wanted(SeriesKind.DERMOSCOPY, options):
            if task in (Task.SKIN_LESION_CLASSIFICATION, Task.SKIN_LESION_SEGMENTATION):
                context = _context(inputs, [img], Modality.DERM, options)
                planned.append(PlannedRequest(TaskRequest(task, Modality.DERM, [_image_input(img)], context=context),
                                              [img]))
    for vol in inputs.volumes:
        tasks = _wanted(vol.kind, options)
        if not tasks and vol.kind is SeriesKind.CT:
            notes.append(f"CT series {vol.ref.series_instance_uid}: no abdominal coverage, no task applies")
        for task in tasks:
            if task is Task.ABDOMINAL_ORGAN_SEGMENTATION:
                volume = ImageInput(vol.hu, volume=True, source_id=vol.ref.series_instance_uid)
                planned.append(PlannedRequest(TaskRequest(task, Modality.CT, [volume]), [], vol))
    first_2d = (frontal or derm)[:1]
    planned += _questions(first_2d, options, notes)
    if options.region:
        if first_2d:
            img = first_2d[0]
            region = img.orientation.box_to_model(options.region, img.ref.rows, img.ref.cols)
            planned.append(PlannedRequest(TaskRequest(Task.REGION_CAPTIONING, _modality_2d(img), [_image_input(img)],
                                                      region=region), [img]))
        else:
            notes.append("region caption skipped: the study has no 2D image")
    for skipped in inputs.skipped:
        notes.append(f"skipped {skipped.sop_instance_uid or skipped.series_instance_uid}: {skipped.reason}")
    return planned, notes


def _comparison(inputs: StudyInputs, prior: StudyInputs | None, options: StudyOptions,
                notes: list[str]) -> PlannedRequest | None:
    """The longitudinal comparison of the current chest views with the prior's (None, with a note, if none)."""
    if prior is None:
        notes.append("longitudinal comparison skipped: no prior study")
        return None
    try:
        images, n_current = longitudinal_images(inputs, prior)
    except ValueError as exc:
        notes.append(f"longitudinal comparison skipped: {exc}")
        return None
    details = _prior_details(prior) if options.prior_details else ""
    request = TaskRequest(Task.LONGITUDINAL_COMPARISON, Modality.CXR, [_image_input(i) for i in images],
                          num_current=n_current, prior_details=details)
    return PlannedRequest(request, images, None, prior.study_instance_uid)


def _questions(first_2d: list[PreparedImage], options: StudyOptions, notes: list[str]) -> list[PlannedRequest]:
    """The reader's question and the rules' standing questions (VQA), asked of the study's first 2D image."""
    questions = list(dict.fromkeys(([options.ask] if options.ask else []) + list(options.questions)))
    if not questions:
        return []
    if options.declared_tasks is not None and Task.VQA not in options.declared_tasks:
        notes.append(f"{len(questions)} question(s) not asked: the model does not declare vqa")
        return []
    if not first_2d:
        notes.append("question skipped: the study has no chest radiograph or dermoscopy image")
        return []
    img = first_2d[0]
    return [PlannedRequest(TaskRequest(Task.VQA, _modality_2d(img), [_image_input(img)],
                                       question=with_image_tag(question)), [img])
            for question in questions]
