"""A study's answers -> its result objects, in one call: SR, its text report, SEG, presentation states, SC, KO.

:func:`build_study_objects` groups the masks per source image (one SEG per segmented image or CT
volume, all segments of all tasks on it), writes the measurement report that references them, the
same results as a text report, and per drawn 2D image a presentation state and a burned-in Secondary
Capture, then optionally a Key Object Selection of the images with findings. Every UID derives from
the job key (:func:`.identity.derive_uid`), so building the same job again yields the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from pydicom import Dataset

from medversa.inference import Answer

from . import header as h
from .answer_sr import RegionAnswer, build_answer_sr
from .identity import AlgorithmInfo, derive_uid
from .ko import build_key_objects
from .plan import PlannedRequest, StudyOptions
from .pr import build_presentation_state
from .references import ImageRef, PreparedImage, SeriesKind, StudyInputs, VolumeRef
from .results import TaskResult
from .sc import build_secondary_capture
from .seg import build_segmentation
from .sr import SegReference, build_sr, build_text_report


class ObjectKind(StrEnum):
    """The kinds of result object the node writes; the value starts their file names and export rows."""

    #: The TID 1500 measurement report (Comprehensive 3D SR).
    SR = "SR"
    #: The same results as a TID 2000 text report (Enhanced SR), in a series of its own.
    SR_TEXT = "SR-TEXT"
    SEG = "SEG"
    #: Grayscale or colour softcopy presentation state drawing boxes and outlines.
    PR = "PR"
    #: Secondary Capture with the results burned in.
    SC = "SC"
    #: Key Object Selection of the images with findings.
    KO = "KO"

    @property
    def uid_part(self) -> str:
        """What UIDs of this kind derive from (kept as the first versions wrote it: the same job, the same UIDs)."""
        return "SR-text" if self is ObjectKind.SR_TEXT else self.value


@dataclass
class WrittenObject:
    """One result object the study's job writes and exports, and its kind (file name prefix, export row)."""

    kind: ObjectKind
    dataset: Dataset


@dataclass
class StudyObjects:
    """What building a study gives: the answers resolved to source references, and the objects written."""

    results: list[TaskResult]
    objects: list[WrittenObject]


class _Uids:
    """Series and instance UIDs and numbers of one job's objects, derived from its key."""

    def __init__(self, org_root: str, key: str) -> None:
        self.org_root, self.key = org_root, key
        self.counters: dict[ObjectKind, int] = {}

    def series(self, kind: ObjectKind) -> str:
        return derive_uid(self.org_root, self.key, "series", kind.uid_part)

    def next(self, kind: ObjectKind) -> tuple[str, int]:
        """The next instance of ``kind``: its SOP Instance UID and Instance Number (1, 2, ...)."""
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return derive_uid(self.org_root, self.key, kind.uid_part, str(self.counters[kind])), self.counters[kind]


def build_study_objects(datasets: list[Dataset], inputs: StudyInputs, planned: list[PlannedRequest],
                        answers: list[Answer], options: StudyOptions,
                        prior_datasets: list[Dataset] | None = None) -> StudyObjects:
    """The result objects of a study from the model's ``answers`` to the ``planned`` requests (in order).

    ``datasets`` are the study's instances (``inputs`` prepared from them), ``prior_datasets`` the
    prior study's (referenced as evidence by a longitudinal comparison). The SR comes first, then its
    text report, the SEGs, presentation states, Secondary Captures and the Key Object Selection.
    """
    if len(answers) != len(planned):
        raise ValueError(f"{len(answers)} answer(s) to {len(planned)} planned request(s)")
    results = [p.result(answer) for p, answer in zip(planned, answers, strict=True)]
    alg = options.algorithm
    uids = _Uids(alg.org_root, options.job_key or f"{inputs.study_instance_uid}:{alg.model_id}")
    if not results:
        return StudyObjects([], _not_analysed_notice(datasets, inputs, options, uids))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    objects, seg_refs = _segmentations(results, by_uid, options, uids)

    evidence = list({str(ds.SOPInstanceUID): ds for p in planned for ds in _sources(p, by_uid)}.values())
    evidence += [ds for ds in prior_datasets or [] if any(str(ds.SOPInstanceUID) == i.ref.sop_instance_uid
                                                          for p in planned for i in p.images)]
    evidence += [o.dataset for o in objects]
    uid, number = uids.next(ObjectKind.SR)
    not_analysed = [s.reader_note for s in inputs.skipped if s.reader_note]
    sr = build_sr(results, evidence, alg, uids.series(ObjectKind.SR), uid, seg_refs, instance_number=number,
                  not_analysed=not_analysed)
    # The same results as a text report (TID 2000), in a series of its own: viewers show text SRs.
    uid, number = uids.next(ObjectKind.SR_TEXT)
    text = build_text_report(sr, alg, uids.series(ObjectKind.SR_TEXT), uid, instance_number=number,
                             films=_film_names(planned, by_uid))
    objects[:0] = [WrittenObject(ObjectKind.SR, sr), WrittenObject(ObjectKind.SR_TEXT, text)]

    positives: list[Dataset] = []
    for img, drawn in _drawn_images(planned, results, inputs.study_instance_uid):
        source = by_uid[img.ref.sop_instance_uid]
        positives.append(source)
        objects += _overlays(source, img, drawn, options, uids)
    if options.key_objects:
        uid, number = uids.next(ObjectKind.KO)
        ko = build_key_objects(list({str(d.SOPInstanceUID): d for d in positives}.values()), sr, alg,
                               uids.series(ObjectKind.KO), uid, instance_number=number)
        if ko is not None:
            objects.append(WrittenObject(ObjectKind.KO, ko))
    return StudyObjects(results, objects)


def _film_names(planned: list[PlannedRequest], by_uid: dict[str, Dataset]) -> dict[str, str]:
    """How the text report names each 2D source image: its view and the numbers a viewer shows
    ("PA film (series 1, image 2)")."""
    names = {}
    for request in planned:
        for img in request.images:
            ds = by_uid.get(img.ref.sop_instance_uid)
            if ds is None:
                continue
            numbers = ", ".join(f"{what} {h.text(ds, tag)}" for what, tag in (("series", "SeriesNumber"),
                                                                                ("image", "InstanceNumber"))
                                if h.text(ds, tag))
            kind = "film" if img.kind is SeriesKind.CHEST_RADIOGRAPH else "image"
            name = f"{img.projection} {kind}" if img.projection else kind
            names[img.ref.sop_instance_uid] = f"{name} ({numbers})" if numbers else name
    return names


def _not_analysed_notice(datasets: list[Dataset], inputs: StudyInputs, options: StudyOptions,
                         uids: _Uids) -> list[WrittenObject]:
    """With no result, the SR and its text report naming each image the node was sent to read and
    left out (:attr:`.references.Skipped.reader_note`): the reader learns the study was looked at and
    why nothing came back. Its evidence is those images. Nothing when there is no such image."""
    left_out = [s for s in inputs.skipped if s.reader_note]
    if not (options.not_analysed_notice and left_out):
        return []
    evidence = [ds for ds in datasets if any(
        str(ds.SOPInstanceUID) == s.sop_instance_uid
        or (not s.sop_instance_uid and str(ds.get("SeriesInstanceUID", "")) == s.series_instance_uid)
        for s in left_out)]
    uid, number = uids.next(ObjectKind.SR)
    sr = build_sr([], evidence, options.algorithm, uids.series(ObjectKind.SR), uid, instance_number=number,
                  not_analysed=[s.reader_note for s in left_out])
    uid, number = uids.next(ObjectKind.SR_TEXT)
    text = build_text_report(sr, options.algorithm, uids.series(ObjectKind.SR_TEXT), uid, instance_number=number)
    return [WrittenObject(ObjectKind.SR, sr), WrittenObject(ObjectKind.SR_TEXT, text)]


def answer_uids(org_root: str, key: str) -> tuple[str, str]:
    """Series and SOP Instance UID of an ask job's answer SR; ``key`` is the ask's own (never the study's)."""
    return derive_uid(org_root, key, "series"), derive_uid(org_root, key, ObjectKind.SR.uid_part)


def build_answer_object(answers: list[RegionAnswer], annotation: Dataset | None, images: list[Dataset],
                        algorithm: AlgorithmInfo, key: str) -> WrittenObject:
    """The SR answering a reader's regions (:func:`.answer_sr.build_answer_sr`), its UIDs from the ask's key."""
    series, uid = answer_uids(algorithm.org_root, key)
    return WrittenObject(ObjectKind.SR, build_answer_sr(answers, annotation, images, algorithm, series, uid))


def _segmentations(results: list[TaskResult], by_uid: dict[str, Dataset], options: StudyOptions,
                   uids: _Uids) -> tuple[list[WrittenObject], dict[tuple[int, str], SegReference]]:
    """One SEG per segmented 2D source image / CT volume, and where each (result, label) landed in it."""
    groups: dict[str, list[tuple[int, str, np.ndarray]]] = {}
    sources_of: dict[str, tuple[list[Dataset], ImageRef | VolumeRef]] = {}
    for index, result in enumerate(results):
        for m in result.answer.masks_2d:
            ref = result.images[m.image_index]
            key = f"{ref.sop_instance_uid}:{ref.frame or 0}"
            groups.setdefault(key, []).append((index, m.label, m.mask))
            sources_of[key] = ([by_uid[ref.sop_instance_uid]], ref)
        for m in result.answer.masks_3d:
            vref = result.volume
            if vref is None:
                raise ValueError(f"{result.task.value}: a 3D mask without its source volume")
            groups.setdefault(vref.series_instance_uid, []).append((index, m.label, m.mask))
            slices = [by_uid[uid] for uid in dict.fromkeys(vref.sop_instance_uids)]
            sources_of[vref.series_instance_uid] = (slices, vref)
    objects: list[WrittenObject] = []
    refs: dict[tuple[int, str], SegReference] = {}
    for key, items in groups.items():
        sources, ref = sources_of[key]
        uid, number = uids.next(ObjectKind.SEG)
        seg = build_segmentation(sources, [(label, mask) for _, label, mask in items], ref, options.algorithm,
                                 uids.series(ObjectKind.SEG), uid, instance_number=number)
        if seg is None:
            continue
        objects.append(WrittenObject(ObjectKind.SEG, seg.dataset))
        for index, label, _ in items:
            refs[(index, label)] = SegReference(seg, ref)
    return objects, refs


def _drawn_images(planned: list[PlannedRequest], results: list[TaskResult],
                  study_uid: str) -> list[tuple[PreparedImage, list[Answer]]]:
    """The current study's 2D images with boxes or masks, each with those answers re-indexed to image 0."""
    drawn: dict[str, tuple[PreparedImage, list[Answer]]] = {}
    for p, result in zip(planned, results, strict=True):
        answer = result.answer
        for k, img in enumerate(p.images):
            if img.ref.study_instance_uid != study_uid:
                continue
            if any(b.image_index == k for b in answer.boxes) or any(m.image_index == k for m in answer.masks_2d):
                key = f"{img.ref.sop_instance_uid}:{img.ref.frame or 0}"
                drawn.setdefault(key, (img, []))[1].append(_reindexed(answer, k))
    return list(drawn.values())


def _overlays(source: Dataset, img: PreparedImage, answers: list[Answer], options: StudyOptions,
              uids: _Uids) -> list[WrittenObject]:
    """The presentation state and the burned-in Secondary Capture of one drawn image (as options say)."""
    alg = options.algorithm
    objects: list[WrittenObject] = []
    if options.presentation_states:
        uid, number = uids.next(ObjectKind.PR)
        pr = build_presentation_state(source, img.ref, answers, alg, uids.series(ObjectKind.PR), uid, 0,
                                      instance_number=number)
        if pr is not None:
            objects.append(WrittenObject(ObjectKind.PR, pr))
    colour = img.pixels.ndim == 3
    if options.burned_in and (not colour or options.burned_in_for_colour):
        uid, number = uids.next(ObjectKind.SC)
        sc = build_secondary_capture(source, img.ref, img.pixels, answers, alg, uids.series(ObjectKind.SC), uid, 0,
                                     instance_number=number)
        if sc is not None:
            objects.append(WrittenObject(ObjectKind.SC, sc))
    return objects


def _sources(p: PlannedRequest, by_uid: dict[str, Dataset]) -> list[Dataset]:
    uids = [i.ref.sop_instance_uid for i in p.images] + (list(p.volume.ref.sop_instance_uids) if p.volume else [])
    return [by_uid[u] for u in uids if u in by_uid]


def _reindexed(answer: Answer, k: int) -> Answer:
    """The answer's boxes and masks on image ``k`` as if it were image 0 (one image per overlay)."""
    return replace(answer,
                   boxes=[replace(b, image_index=0) for b in answer.boxes if b.image_index == k],
                   masks_2d=[replace(m, image_index=0) for m in answer.masks_2d if m.image_index == k])
