"""A reader asks from the viewer: annotation objects and ``medversa ask`` become ask jobs.

An SR or presentation state the SCP receives is recorded with ``annotation = "new"`` and never
reopens its study (:func:`medversa.node.scp.record_instances`). The scheduler then looks at it
(:func:`queue_annotations`): the node's own results (Manufacturer, Contributing Equipment, the
results' series marker, an object it exported itself) and objects without regions on images are
ignored with their reason; a reader's annotation object becomes an **ask job**, a job of its own
(``Job.ask`` set) that never supersedes, and is never superseded by, the study's analysis.

The worker runs an ask job (:func:`compute_ask`) on the referenced image only: already spooled,
else retrieved from the PACS (C-MOVE or C-GET of its series, as the priors are, then its row waited
for). Per region: region captioning of the region's bounding box (``TaskRequest.region``, pixels of
the image, formatted for the model by ``format_region``) and, where the label is a question, VQA of
the image (the published VQA prompt is the question alone, so the region is not stated in it: the
region's caption answers for the region). Tasks the checkpoint does not declare are not run; the
answer says so at the region. The answer SR (:func:`medversa.dicom_mapping.answer_sr.build_answer_sr`)
goes to the export destinations; its UIDs derive from the ask's own key (the annotation object's
SOP Instance UID, or the command's question, region and image), never the study's main SR's.

A retrieve for an ask must not start the study's analysis either. C-MOVE sub-operations the node asked
for itself (Move Originator AE Title = ours) never count for the analysis (:mod:`medversa.node.scp`);
a C-GET's rows are recorded by the priors' code, so while a retrieve runs the study is held
(``is_prior``, which the completion check skips) and afterwards its pending count loses what the
retrieve added. What arrived is marked (calling AE ``retrieved``): when the PACS sends the same image
for analysis later (a reader who annotates a study before it is stable and routed), it counts as new
then, and the study is analysed as usual.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from sqlalchemy import func, select

from medversa.dicom_mapping import (
    ANNOTATION_CLASSES,
    AS_STORED,
    AlgorithmInfo,
    ImageReference,
    ObjectKind,
    Region,
    RegionAnswer,
    Reorientation,
    SeriesKind,
    bounding_box,
    build_answer_object,
    in_pixels,
    own_result_reason,
    prepare_study,
    read_annotation,
    with_image_tag,
)
from medversa.dicom_mapping import header as h
from medversa.inference import ImageInput, Modality, Task, TaskRequest

from .job_failures import TransientJobError
from .job_states import move_job
from .job_store import Export, Instance, Job, JobState, Study, StudyState, utcnow
from .node_context import NodeContext
from .result_files import write_atomic

LOGGER = logging.getLogger(__name__)

#: Manufacturer and series-description marker of the node's results (as :class:`AlgorithmInfo` writes them).
OWN_MANUFACTURER = AlgorithmInfo().manufacturer
OWN_SERIES_MARKER = "MedVersa"
_MODALITIES = {SeriesKind.CHEST_RADIOGRAPH: Modality.CXR, SeriesKind.DERMOSCOPY: Modality.DERM}
#: At most this many new annotation objects are looked at per scheduler tick.
_BATCH = 50


# -- the scheduler's side: annotation objects -> ask jobs ---------------------------------------


def queue_annotations(ctx: NodeContext) -> list[int]:
    """Look at every SR / presentation state recorded since the last tick; returns the ask jobs created."""
    with ctx.store.session() as s:
        new = [(i.id, i.path, i.sop_instance_uid) for i in
               s.scalars(select(Instance).where(Instance.annotation == "new").order_by(Instance.id).limit(_BATCH))]
    created = []
    for instance_id, path, sop_uid in new:
        if _in_a_prior(ctx, instance_id):
            outcome, job_id = "ignored: retrieved with a prior study, not sent to the node", None
        else:
            outcome, job_id = _look_at(ctx, instance_id, Path(path), sop_uid)
        with ctx.store.session() as s:
            row = s.get(Instance, instance_id)
            if row is not None:
                row.annotation = outcome[:256]
        if job_id is not None:
            created.append(job_id)
    return created


def _in_a_prior(ctx: NodeContext, instance_id: int) -> bool:
    """Whether the instance came with a prior study's retrieve (its study is a prior, and no ask of
    its own is running: an ask holds its study as a prior while it retrieves, see :func:`_retrieve_held`)."""
    with ctx.store.session() as s:
        instance = s.get(Instance, instance_id)
        if instance is None or not instance.study.is_prior:
            return False
        return not any(j.ask is not None and j.state in (JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING)
                       for j in instance.study.jobs)


def _look_at(ctx: NodeContext, instance_id: int, path: Path, sop_uid: str) -> tuple[str, int | None]:
    """What to do with one SR / presentation state: ("asked: job N", id) or ("ignored: why", None)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - a vanished or damaged file is a reason, not a crash
        LOGGER.warning("annotation %s: cannot be read (%s)", sop_uid, type(exc).__name__)
        return f"ignored: unreadable ({type(exc).__name__})", None
    with ctx.store.session() as s:
        exported = s.scalars(select(Export.job_id).where(Export.sop_instance_uid == sop_uid)).first()
    why = (f"the node's own result (exported by job {exported})" if exported is not None
           else own_result_reason(ds, OWN_MANUFACTURER, OWN_SERIES_MARKER))
    if why:
        LOGGER.info("annotation %s: not a reader's annotation: %s", sop_uid, why)
        return f"ignored: node's own result: {why}", None
    annotation, why = read_annotation(ds)
    if annotation is None:
        LOGGER.info("%s %s: not a reader's annotation: %s", h.text(ds, "Modality") or "object", sop_uid, why)
        return f"ignored: {why}", None
    questions = list(dict.fromkeys(r.question for r in annotation.regions if r.question))
    tasks = [Task.REGION_CAPTIONING.value] + ([Task.VQA.value] if questions else [])
    job_id = create_ask_job(ctx, instance_id, tasks, questions, {
        "source": "annotation", "annotation_uid": sop_uid, "path": str(path), "kind": annotation.kind},
        [f"asked by {annotation.kind} {sop_uid}: {len(annotation.regions)} region(s), "
         f"{len(questions)} question(s)"] + [f"not read: {s}" for s in annotation.skipped])
    LOGGER.info("annotation %s (%s, %d region(s)): ask job %d", sop_uid, annotation.kind, len(annotation.regions),
                job_id)
    return f"asked: job {job_id}", job_id


def create_ask_job(ctx: NodeContext, instance_or_study: int, tasks: list[str], questions: list[str], ask: dict,
                    notes: list[str], *, study_id: int | None = None, state: JobState = JobState.RECEIVED) -> int:
    """A job row for an ask; the study's own jobs and its state are left alone."""
    with ctx.store.session() as s:
        if study_id is None:
            instance = s.get(Instance, instance_or_study)
            assert instance is not None
            study_id = instance.study_id
        version = (s.scalar(select(func.max(Job.version)).where(Job.study_id == study_id)) or 0) + 1
        job = Job(study_id=study_id, version=version, tasks=tasks, queue=ctx.settings.model.queue, state=state,
                  notes=notes, questions=questions, ask=ask)
        s.add(job)
        s.flush()
        return job.id


# -- the worker's side: an ask job -> answer SR -------------------------------------------------


@dataclass
class _Image:
    """The referenced image, read and prepared for the model."""

    dataset: Dataset
    pixels: np.ndarray
    kind: SeriesKind
    rows: int
    cols: int
    #: How the stored pixels are turned for the model (a chest film stored mirrored or turned).
    orientation: Reorientation = AS_STORED


def compute_ask(ctx: NodeContext, job_id: int, last_attempt: bool) -> None:
    """Answer one ask job: regions -> image -> model -> answer SR and its export rows.

    Raises :class:`medversa.node.jobs.TransientJobError` when the PACS could not be reached for the
    image (retried); an image that is nowhere, or not one the model reads, ends the job without an
    SR, the reason logged and kept in the job's error and notes.
    """
    started = time.perf_counter()
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        ask = dict(job.ask or {})
        study_uid = job.study.study_instance_uid
    notes: list[str] = []
    if ask.get("source") == "annotation":
        source = pydicom.dcmread(ask["path"])
        annotation, why = read_annotation(source)
        if annotation is None:
            return _unanswered(ctx, job_id, f"annotation {ask.get('annotation_uid')}: {why}", notes)
        regions = annotation.regions
    else:
        source = None
        regions = []
    images: dict[str, _Image] = {}
    for ref in _references(regions, ask):
        image, note, retryable = find_image(ctx, study_uid, ref)
        if retryable and not last_attempt:
            raise TransientJobError(f"image {ref.sop_instance_uid}: {note}")
        if note:
            what = ref.sop_instance_uid or "(the study's first image the model reads)"
            notes.append(f"image {what}: {note}")
        if image is not None:
            images[str(image.dataset.SOPInstanceUID)] = image
    if source is None:  # `medversa ask`: one region (or the whole image) on the chosen image
        if not images:
            return _unanswered(ctx, job_id, "; ".join(notes) or "no image to ask about", notes)
        uid, image = next(iter(images.items()))
        regions = [_command_region(ask, uid, image)]
    answerable = [r for r in regions if r.image.sop_instance_uid in images]
    for region in regions:
        if region.image.sop_instance_uid not in images:
            notes.append(f"{region.origin}: not answered, its image {region.image.sop_instance_uid} is not available")
    if not answerable:
        return _unanswered(ctx, job_id, "; ".join(notes) or "no region on an available image", notes)
    answers = _answer(ctx, answerable, images, ask, notes)
    algorithm = ctx.algorithm
    key = ask_key(study_uid, ask, algorithm.model_id)
    shown = [images[uid].dataset for uid in dict.fromkeys(a.region.image.sop_instance_uid for a in answers)]
    ds = build_answer_object(answers, source, shown, algorithm, key).dataset
    _record_objects(ctx, job_id, study_uid, ds, notes)
    LOGGER.info("ask job %d: %d region(s) answered in %.1f s", job_id, len(answers), time.perf_counter() - started)


def ask_key(study_uid: str, ask: dict, model_id: str) -> str:
    """The ask's own job key (result UIDs derive from it): the annotation object's SOP Instance UID, or
    the command's question, region and image; never the study's main key."""
    if ask.get("source") == "annotation":
        return f"{study_uid}:ask:{ask['annotation_uid']}:{model_id}"
    what = f"{ask.get('question', '')}|{ask.get('region')}|{ask.get('image_uid', '')}"
    return f"{study_uid}:ask-command:{hashlib.sha256(what.encode()).hexdigest()[:32]}:{model_id}"


def _references(regions: list[Region], ask: dict) -> list[ImageReference]:
    if regions:
        return list({r.image.sop_instance_uid: r.image for r in regions}.values())
    return [ImageReference("", ask.get("image_uid", ""), ask.get("series_uid", ""))]


def _command_region(ask: dict, uid: str, image: _Image) -> Region:
    """``medversa ask``'s region as a closed rectangle (or the whole image when none was given)."""
    ref = ImageReference(str(image.dataset.SOPClassUID), uid, str(image.dataset.SeriesInstanceUID))
    x0, y0, x1, y1 = ask.get("region") or (0, 0, image.cols, image.rows)
    points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
    return Region("POLYLINE", points, ref, ask.get("question", ""), "medversa ask")


def _answer(ctx: NodeContext, regions: list[Region], images: dict[str, _Image], ask: dict,
            notes: list[str]) -> list[RegionAnswer]:
    """Run region captioning per region (and VQA per question) in one batch; answers in region order."""
    declared = ctx.analyzer.declaration.tasks
    requests: list[TaskRequest] = []
    slots: list[tuple[int, str]] = []
    pending: list[dict] = []
    for k, region in enumerate(regions):
        image = images[region.image.sop_instance_uid]
        region = regions[k] = in_pixels(region, image.rows, image.cols)
        question = region.question if ask.get("source") == "annotation" else str(ask.get("question") or "")
        entry = {"region": region, "question": question, "note": []}
        pending.append(entry)
        modality = _MODALITIES.get(image.kind)
        if modality is None:
            entry["note"].append(f"not answered: the model does not read {image.kind.value} images")
            continue
        pixels = ImageInput(image.orientation.to_model(image.pixels), source_id=region.image.sop_instance_uid)
        wants_caption = ask.get("source") == "annotation" or ask.get("region") is not None
        for task, build in ((Task.REGION_CAPTIONING, wants_caption), (Task.VQA, bool(question))):
            if not build:
                continue
            if declared is not None and task not in declared:
                entry["note"].append(f"not answered: the model does not declare {task.value}")
                continue
            if task is Task.REGION_CAPTIONING:
                try:
                    box = bounding_box(region, image.rows, image.cols)
                except ValueError as exc:
                    entry["note"].append(str(exc))
                    continue
                box = image.orientation.box_to_model(box, image.rows, image.cols)
                requests.append(TaskRequest(task, modality, [pixels], region=box))
            else:
                asked = with_image_tag(question)
                requests.append(TaskRequest(task, modality, [pixels], question=asked))
            slots.append((k, task.value))
    answers = ctx.analyzer.run(requests, choose_for=ctx.choose_for) if requests else []
    for (k, task), answer in zip(slots, answers, strict=False):
        pending[k]["caption" if task == Task.REGION_CAPTIONING.value else "answer"] = answer.plain_text
    result = []
    for entry in pending:
        note = "; ".join(entry["note"])
        if note:
            notes.append(f"{entry['region'].origin}: {note}")
        result.append(RegionAnswer(entry["region"], entry.get("caption", ""), entry["question"],
                                   entry.get("answer", ""), note))
    return result


def _record_objects(ctx: NodeContext, job_id: int, study_uid: str, ds: Dataset, notes: list[str]) -> None:
    """Write the answer SR into the results folder and its export rows (as the study's jobs do)."""
    folder = ctx.settings.results_dir / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ObjectKind.SR}_{ds.SOPInstanceUID}.dcm"
    write_atomic(ds, path)
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        for dest in ctx.settings.export.destinations:
            exists = s.scalars(select(Export).where(Export.job_id == job_id, Export.destination == str(dest),
                                                    Export.sop_instance_uid == str(ds.SOPInstanceUID))).first()
            if exists is None:
                s.add(Export(job_id=job_id, sop_instance_uid=str(ds.SOPInstanceUID), kind=ObjectKind.SR,
                             path=str(path), destination=str(dest)))
        job.notes = list(job.notes or []) + notes
        move_job(job, JobState.EXPORTING, reason="answer SR written")
        job.finished_at = utcnow()
        job.error = ""


def _unanswered(ctx: NodeContext, job_id: int, reason: str, notes: list[str]) -> None:
    """End an ask job without an SR: the reason is logged and kept (no crash, no retry)."""
    LOGGER.warning("ask job %d: not answered: %s", job_id, reason)
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        job.notes = list(job.notes or []) + notes + [f"not answered: {reason}"]
        job.error = f"not answered: {reason}"[:2000]
        move_job(job, JobState.EXPORTING, reason="not answered")
        job.finished_at = utcnow()


# -- the referenced image: spooled, else retrieved ----------------------------------------------


def find_image(ctx: NodeContext, study_uid: str, ref: ImageReference) -> tuple[_Image | None, str, bool]:
    """The referenced image (or, with no SOP Instance UID, the study's first image the model reads),
    from the spool or retrieved from the PACS; returns (image, note, retryable). Never raises."""
    path = _spooled_image(ctx, study_uid, ref.sop_instance_uid)
    note = ""
    if path is None:
        pacs = ctx.settings.pacs
        if pacs.peer is None:
            return None, "not on the node and no PACS configured to retrieve it from", False
        from .scu import AssociationFailed

        series = [ref.series_instance_uid] if ref.series_instance_uid else None
        try:
            note = f"retrieved: {_retrieve_held(ctx, study_uid, series)}"
        except AssociationFailed as exc:
            return None, f"retrieve from {pacs.peer.ae_title} failed ({exc})", exc.transient
        except (OSError, TimeoutError) as exc:
            return None, f"retrieve from {pacs.peer.ae_title} failed ({type(exc).__name__}: {exc})", True
        path = _spooled_image(ctx, study_uid, ref.sop_instance_uid)
        if path is None:
            what = f"image {ref.sop_instance_uid}" if ref.sop_instance_uid else "an image the model reads"
            return None, f"{what} is neither on the node nor on the PACS {pacs.peer.ae_title} ({note})", False
    try:
        ds = pydicom.dcmread(path)
        inputs = prepare_study([ds])
    except Exception as exc:  # noqa: BLE001 - a damaged or unusable image is a reason, not a crash
        return None, f"cannot be read ({type(exc).__name__}: {exc})", False
    frame = ref.frame or None
    prepared = next((i for i in inputs.images if (i.ref.frame or None) == frame or frame is None), None)
    if prepared is None:
        why = inputs.skipped[0].reason if inputs.skipped else "not a chest radiograph or skin image"
        return None, f"the model does not read it: {why}", False
    rows, cols = prepared.pixels.shape[:2]
    return _Image(ds, prepared.pixels, prepared.kind, int(rows), int(cols), prepared.orientation), note, False


def _spooled_image(ctx: NodeContext, study_uid: str, sop_uid: str) -> Path | None:
    """The spooled file of ``sop_uid`` (or of the study's first image the model may read)."""
    with ctx.store.session() as s:
        query = select(Instance).join(Study).where(Study.study_instance_uid == study_uid)
        if sop_uid:
            rows = list(s.scalars(query.where(Instance.sop_instance_uid == sop_uid)))
        else:
            rows = [r for r in s.scalars(query.order_by(Instance.id)) if r.sop_class_uid not in ANNOTATION_CLASSES]
            rows.sort(key=lambda r: (r.modality not in ("CR", "DX"), r.modality not in ("XC", "DMS", "OT")))
        for row in rows:
            if Path(row.path).is_file():
                return Path(row.path)
    return None


def _retrieve_held(ctx: NodeContext, study_uid: str, series_uids: list[str] | None) -> str:
    """Retrieve (priors' C-MOVE / C-GET and wait) with the study held from the completion check, then
    put its pending count and state back: what arrives for an ask starts no analysis."""
    from .priors import _retrieve

    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            study = Study(study_instance_uid=study_uid, state=StudyState.DONE)
            s.add(study)
            s.flush()
        before = (study.is_prior,)
        known = set(s.scalars(select(Instance.sop_instance_uid).where(Instance.study_id == study.id)))
        study.is_prior = True
    try:
        return _retrieve(ctx, study_uid, series_uids)
    finally:
        with ctx.store.session() as s:
            study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
            arrived = [i for i in s.scalars(select(Instance).where(Instance.study_id == study.id))
                       if i.sop_instance_uid not in known]
            retrieved = [i for i in arrived if series_uids is None or i.series_instance_uid in series_uids]
            # What the node retrieved itself (C-MOVE with us as Move Originator, C-GET) is recorded as
            # RETRIEVED and was never counted; an instance the PACS routed meanwhile counts for the study's
            # analysis, so pending_instances is left as the recorder made it.
            for row in retrieved:
                if row.annotation == "new":
                    row.annotation = "ignored: retrieved for an ask, not sent by the PACS"
            study.is_prior = before[0]
