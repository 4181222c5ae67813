"""The Structured Report: a TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13).

Content, following IHE Radiology AI Results (AIR):

- Observation context with the algorithm as device observer (TID 1004: UID,
  name, manufacturer, model name); Procedure Reported names the imaging
  procedure, not the algorithm.
- Imaging measurements (TID 1501/1410/1411): each detection as a planar region
  (SCOORD closed POLYLINE rectangle on its source image) whose finding type is
  the class found; each segmentation as a region referencing its SEG segment,
  with its area (mm2, 2D) or volume (ml, 3D); each classification result as a
  finding with its presence (present / absent for classes answered ``<N/A>``).
- Qualitative evaluations (TID 1500 row 12): the generated report as Findings
  (LOINC 59776-5) and Impression (LOINC 19005-8) text, the longitudinal
  comparison text (the prior study is referenced in the evidence), question /
  answer pairs from VQA and region captioning, and a statement that the document
  is AI-generated. The document is UNVERIFIED (VerificationFlag) and partial.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from medversa.inference.tasks import Task

from . import codes as mv
from .identity import CHARACTER_SET, AlgorithmInfo, derive_uid, drop_invalid_copied_attributes
from .references import ImageRef, VolumeRef
from .results import TaskResult, pixel_area_mm2, volume_ml
from .seg import SegmentationResult

LOGGER = logging.getLogger(__name__)

SERIES_DESCRIPTION = "MedVersa report (AI-generated, unverified)"
AI_STATEMENT = ("This report was generated automatically by an AI algorithm ({name} {version}) "
                "and has not been verified by a physician.")
_MM2 = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_QUESTION = hd.sr.CodedConcept("question", mv.PRIVATE, "Question")
_ANSWER = hd.sr.CodedConcept("answer", mv.PRIVATE, "Answer")
_AI_NOTICE = hd.sr.CodedConcept("ai-notice", mv.PRIVATE, "AI-generated content notice")


@dataclass
class SegReference:
    """Where a segmentation result was written: its SEG and the segment."""

    seg: SegmentationResult
    source: ImageRef | VolumeRef


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A closed POLYLINE rectangle in image coordinates (column, row), PS3.3 C.18.6.1.2."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def _source_image(ref: ImageRef) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(ref.sop_class_uid, ref.sop_instance_uid,
                                      [ref.frame] if ref.frame else None)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Model text as a valid UT value: no control characters but LF, FF, CR, ESC (PS3.5 6.2)."""
    return _CONTROL.sub("", text).strip()


def split_report(text: str) -> tuple[str, str]:
    """Split a complete report into (findings, impression) at an 'Impression:' heading."""
    match = re.search(r"impression\s*:", text, re.IGNORECASE)
    if not match:
        return re.sub(r"^\s*findings\s*:\s*", "", text, flags=re.IGNORECASE).strip(), ""
    findings = re.sub(r"^\s*findings\s*:\s*", "", text[:match.start()], flags=re.IGNORECASE).strip()
    return findings, text[match.end():].strip()


def classes_in_text(text: str, table: dict[str, hd.sr.CodedConcept]) -> list[str]:
    """Class phrases of ``table`` that the answer names (whole words, longest first)."""
    lowered = text.lower()
    found = []
    for name in sorted(table, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", lowered) and not any(name in f for f in found):
            found.append(name)
    return found


class _Builder:
    def __init__(self, algorithm: AlgorithmInfo, key: str) -> None:
        self.algorithm = algorithm
        self.key = key
        self.groups: list = []
        self.texts: list[hd.sr.ContentItem] = []
        self.count = 0

    def tracking(self, label: str) -> hd.sr.TrackingIdentifier:
        self.count += 1
        return hd.sr.TrackingIdentifier(uid=derive_uid(self.algorithm.org_root, self.key, "track", str(self.count)),
                                        identifier=f"{label} #{self.count}"[:64])

    def text(self, name: hd.sr.CodedConcept, value: str) -> None:
        value = clean_text(value)
        if value:
            self.texts.append(hd.sr.TextContentItem(name=name, value=value,
                                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    def detection(self, result: TaskResult) -> None:
        for box in result.answer.boxes:
            ref = result.images[box.image_index]
            region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                       graphic_data=_rectangle(box.x0, box.y0, box.x1, box.y1),
                                       source_image=_source_image(ref))
            self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=self.tracking(box.label),
                referenced_region=region,
                finding_type=mv.finding_code(box.label),
                algorithm_id=self.algorithm.sr_algorithm_id(),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(mv.finding_code(box.label), mv.PRESENT)],
            ))
        self.absent(result)

    def absent(self, result: TaskResult) -> None:
        for label in result.answer.absent:
            self.groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=self.tracking(label),
                finding_type=mv.finding_code(label),
                algorithm_id=self.algorithm.sr_algorithm_id(),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(mv.finding_code(label), mv.ABSENT)],
            ))

    def classification(self, result: TaskResult) -> None:
        table = mv.SKIN_LESION_CLASSES if result.task is Task.SKIN_LESION_CLASSIFICATION else mv.CHEST_PATHOLOGIES
        for name in classes_in_text(result.answer.plain_text, table):
            self.groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=self.tracking(name),
                finding_type=table[name],
                algorithm_id=self.algorithm.sr_algorithm_id(),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(table[name], mv.PRESENT)],
            ))
        self.absent(result)
        self.text(mv.FINDING, result.answer.plain_text)

    def segmentation(self, result: TaskResult, segs: dict[str, SegReference]) -> None:
        masks = [(m.label, m.mask) for m in result.answer.masks_2d] + [(m.label, m.mask) for m in result.answer.masks_3d]
        for label, mask in masks:
            ref = segs.get(label)
            if ref is None:
                continue  # empty mask: not in the SEG (see seg.py); reported below as not found
            info = next(s for s in ref.seg.segments if s.label == label)
            seg_ds = ref.seg.dataset
            code = mv.segment_codes(label).type
            if isinstance(ref.source, VolumeRef):
                measurement = hd.sr.Measurement(name=mv.VOLUME, value=round(volume_ml(mask, ref.source), 3), unit=_ML)
                self.groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=self.tracking(label),
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg_ds.SOPClassUID, sop_instance_uid=seg_ds.SOPInstanceUID,
                        segment_number=info.segment_number,
                        source_series=hd.sr.SourceSeriesForSegmentation(ref.source.series_instance_uid)),
                    finding_type=code, algorithm_id=self.algorithm.sr_algorithm_id(),
                    measurements=[measurement],
                ))
            else:
                area = pixel_area_mm2(mask, ref.source)
                self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=self.tracking(label),
                    referenced_segment=hd.sr.ReferencedSegmentationFrame(
                        sop_class_uid=seg_ds.SOPClassUID, sop_instance_uid=seg_ds.SOPInstanceUID,
                        frame_number=info.frame_numbers[0], segment_number=info.segment_number,
                        source_image=hd.sr.SourceImageForSegmentation(
                            ref.source.sop_class_uid, ref.source.sop_instance_uid,
                            [ref.source.frame] if ref.source.frame else None)),
                    finding_type=code, algorithm_id=self.algorithm.sr_algorithm_id(),
                    measurements=[hd.sr.Measurement(name=mv.AREA, value=round(area, 2), unit=_MM2)]
                    if area is not None else None,
                ))
        missing = [label for label, mask in masks if label not in segs]
        for label in missing:
            self.text(mv.FINDING, f"{label}: not found (empty segmentation)")

    def report(self, result: TaskResult) -> None:
        text = result.answer.plain_text
        if result.task is Task.REPORT_FINDINGS:
            self.text(mv.FINDINGS, text)
        elif result.task is Task.REPORT_IMPRESSION:
            self.text(mv.IMPRESSION, text)
        else:
            findings, impression = split_report(text)
            self.text(mv.FINDINGS, findings)
            self.text(mv.IMPRESSION, impression)

    def question_answer(self, result: TaskResult) -> None:
        self.text(_QUESTION, result.question or "")
        self.text(_ANSWER, result.answer.plain_text)

    def comparison(self, result: TaskResult, prior: Dataset | None = None) -> None:
        """The comparison text, naming the prior it was made with: its date and description (read
        from one of its images in the evidence, where they are) and its Study Instance UID."""
        said = ""
        if result.prior_study_uid:
            date = str(prior.get("StudyDate", "") or "") if prior is not None else ""
            description = str(prior.get("StudyDescription", "") or "") if prior is not None else ""
            when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if re.fullmatch(r"\d{8}", date) else ""
            named = ", ".join(part for part in (when, description) if part)
            said = f" (prior study {named + '; ' if named else ''}Study Instance UID {result.prior_study_uid})"
        self.text(mv.COMPARISON, result.answer.plain_text + said)


def procedure_for(results: list[TaskResult]) -> hd.sr.CodedConcept:
    tasks = {r.task for r in results}
    if tasks & {Task.ABDOMINAL_ORGAN_SEGMENTATION}:
        return mv.PROCEDURE_CT_ABDOMEN
    if tasks & {Task.SKIN_LESION_CLASSIFICATION, Task.SKIN_LESION_SEGMENTATION}:
        return mv.IMAGING_PROCEDURE  # no sourced SNOMED CT code for dermoscopy yet
    if any(r.images for r in results):
        return mv.PROCEDURE_CHEST_XRAY
    return mv.IMAGING_PROCEDURE


def build_sr(
    results: list[TaskResult],
    evidence: list[Dataset],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    segmentations: dict[tuple[int, str], SegReference] | None = None,
    series_number: int = 9700,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one study's results.

    ``evidence`` holds every referenced instance: the source images, the prior
    study's images (a longitudinal comparison) and the SEG objects.
    ``segmentations`` maps (index of the result, structure label) to its SEG segment.
    """
    if not results:
        raise ValueError("results: nothing to report")
    builder = _Builder(algorithm, sop_instance_uid)
    segmentations = segmentations or {}
    for index, result in enumerate(results):
        family = result.task.family
        if family == "detection":
            builder.detection(result)
        elif family == "classification":
            builder.classification(result)
        elif family == "segmentation":
            builder.segmentation(result, {label: ref for (i, label), ref in segmentations.items() if i == index})
        elif family == "report generation":
            builder.report(result)
        elif result.task in (Task.VQA, Task.REGION_CAPTIONING):
            builder.question_answer(result)
        elif result.task is Task.LONGITUDINAL_COMPARISON:
            builder.comparison(result, next((ds for ds in evidence
                                             if str(ds.get("StudyInstanceUID", "")) == result.prior_study_uid), None))
    builder.text(_AI_NOTICE, AI_STATEMENT.format(name=algorithm.name, version=algorithm.version))
    if not builder.groups:
        # TID 1500 (as highdicom builds it) needs one measurement group: a text-only result
        # gets a group that identifies the algorithm which wrote the text.
        builder.groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=builder.tracking(f"{algorithm.name} analysis"),
            finding_type=mv.CLINICAL_FINDING,
            algorithm_id=algorithm.sr_algorithm_id(),
        ))

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=algorithm.observer_context()),
        procedure_reported=procedure_for(results),
        imaging_measurements=builder.groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
    )
    if builder.texts:
        container = hd.sr.ContainerContentItem(name=mv.QUALITATIVE_EVALUATIONS,
                                               relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        container.ContentSequence = builder.texts
        report[0].ContentSequence.append(container)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        contributing_equipment=[algorithm.contributing_equipment()],
        specific_character_set=CHARACTER_SET,
    )
    sr.ManufacturerModelName = algorithm.model_name
    sr.SoftwareVersions = list(algorithm.software_versions)
    _frame_references_without_segment_number(sr)
    drop_invalid_copied_attributes(sr)
    return sr


def _frame_references_without_segment_number(item: Dataset) -> None:
    """PS3.3 C.18.3.1: a reference to SEG frames carries no Referenced Segment Number."""
    for child in item.get("ContentSequence", []):
        for ref in child.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        _frame_references_without_segment_number(child)
