"""The Structured Report: a TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13).

Content, following IHE Radiology AI Results (AIR):

- Observation context with the algorithm as device observer (TID 1004: UID,
  name, manufacturer, model name); Procedure Reported names the imaging
  procedure, not the algorithm.
- Imaging measurements (TID 1410/1411): each detection as a planar region
  (SCOORD closed POLYLINE rectangle on its source image) whose finding type is
  the class found (an anatomy box also has the structure as finding site), with
  its area, inferred from the same rectangle (see _area_inferred_from_region);
  each segmentation as a region referencing its
  SEG segment, with its area (mm2, 2D) or volume (ml, 3D), and beside it, under
  the same tracking identifier and UID (one tracked finding, two representations),
  a planar region with the mask's outline (SCOORD closed POLYLINE; for a volume,
  on the slice where the organ is largest, with that cross-section's area), its
  finding site the structure. Every measurement group thus has spatial coordinates,
  which web viewers need to draw it (OHIF 3 draws SCOORD groups only, and fails on a
  tracked finding without coordinates); the SEG reference stays the standard's link
  to the mask.
- Qualitative evaluations (TID 1500 row 12): each classification result and each
  class answered ``<N/A>`` as a CODE item (the finding: present / absent), the
  generated report as Findings (LOINC 59776-5) and Impression (LOINC 19005-8) text,
  the longitudinal comparison text (the prior study is referenced in the evidence),
  question / answer pairs from VQA and region captioning, and a statement that the
  document is AI-generated. The document is UNVERIFIED (VerificationFlag) and partial.

:func:`build_text_report` writes the same results as a TID 2000 text report, which
viewers that never show a TID 1500 document's text do show.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import highdicom as hd
import numpy as np
from pydicom import Dataset
from skimage.measure import approximate_polygon, find_contours

from medversa.inference import Task, TaskFamily

from . import codes as mv
from .identity import AlgorithmInfo, derive_uid
from .references import ImageRef, VolumeRef
from .result_header import ResultHeader
from .results import TaskResult, pixel_area_mm2, volume_ml
from .seg import SegmentationResult

LOGGER = logging.getLogger(__name__)
_SR = TypeVar("_SR", bound=hd.sr.Comprehensive3DSR | hd.sr.EnhancedSR)

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


def outline(mask: np.ndarray, tolerance: float = 0.5) -> np.ndarray | None:
    """The outer boundary of a 2D mask's largest region as a closed POLYLINE (column, row), or None.

    Image coordinates as PS3.3 C.18.6.1.1 defines them: (0, 0) is the top left corner of the
    top left pixel, so a pixel's centre is at +0.5. The contour runs along the pixel edges'
    midpoints (marching squares at 0.5 on the padded mask, closed at the image border) and is
    simplified to within ``tolerance`` pixels.
    """
    padded = np.pad(mask.astype(np.float32), 1)
    contours = [c for c in find_contours(padded, 0.5) if len(c) >= 4]
    if not contours:
        return None
    contour = max(contours, key=lambda c: _shoelace(c))
    contour = approximate_polygon(contour, tolerance)
    if not np.array_equal(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    rows, cols = mask.shape
    points = np.stack([contour[:, 1] - 1 + 0.5, contour[:, 0] - 1 + 0.5], axis=1)
    return np.clip(points, 0, [cols, rows]).astype(float)


def _area_inferred_from_region(group: Dataset, corners: np.ndarray, ref: ImageRef) -> None:
    """Beside the box group's Image Region (TID 1410 row 5), its area NUM names the same rectangle as
    the region it was inferred from (INFERRED FROM SCOORD, as TID 300 does; PS3.3 A.35.13 allows it).

    Why: OHIF 3 (its Cornerstone SR adapter) loads a group into its measurement panel only from a
    SCOORD under the group's first NUM (the TID 1501 / TID 300 form) and fails on a TID 1410 area
    without one, so the box, its area and its Finding (the panel's label) never reach the panel.
    """
    for item in group.ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == mv.AREA.value:
            source = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                       source_image=_source_image(ref))
            source.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
            item.ContentSequence = hd.sr.ContentSequence([source])


def _shoelace(contour: np.ndarray) -> float:
    y, x = contour[:, 0], contour[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2


def _area_mm2(mask: np.ndarray, ref: ImageRef) -> float | None:
    """A 2D mask's area; None without a usable (known, non-zero) pixel spacing."""
    if ref.pixel_spacing is None or min(ref.pixel_spacing) <= 0:
        return None
    return pixel_area_mm2(mask, ref)


def _box_area_mm2(width: float, height: float, ref: ImageRef) -> float | None:
    if ref.pixel_spacing is None or min(ref.pixel_spacing) <= 0:
        return None
    return abs(width * height) * ref.pixel_spacing[0] * ref.pixel_spacing[1]


def _largest_slice(mask: np.ndarray, volume: VolumeRef) -> tuple[int, ImageRef]:
    """The slice of a 3D mask where the structure is largest, as a reference to its source image."""
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    frame = volume.frames[k] if volume.frames else None  # Enhanced CT: one instance, a frame per slice
    return k, ImageRef(volume.study_instance_uid, volume.series_instance_uid, volume.sop_class_uid,
                       volume.sop_instance_uids[k], volume.rows, volume.cols, frame, volume.pixel_spacing,
                       volume.frame_of_reference_uid, "CT")


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


def words_beyond(text: str, names: list[str]) -> bool:
    """Whether ``text`` has words besides the class ``names`` it was found to name (and joining words)."""
    rest = text.lower()
    for name in sorted(names, key=len, reverse=True):
        rest = re.sub(rf"\b{re.escape(name)}\b", " ", rest)
    return bool(set(re.findall(r"[a-z0-9]+", rest)) - {"and", "or", "with"})


class _Builder:
    def __init__(self, algorithm: AlgorithmInfo, key: str) -> None:
        self.algorithm = algorithm
        self.key = key
        self.groups: list = []
        self.texts: list[hd.sr.ContentItem] = []
        self.evaluations: list[hd.sr.ContentItem] = []
        self.count = 0

    def tracking(self, label: str) -> hd.sr.TrackingIdentifier:
        self.count += 1
        return hd.sr.TrackingIdentifier(uid=derive_uid(self.algorithm.org_root, self.key, "track", str(self.count)),
                                        identifier=f"{label} #{self.count}"[:64])

    def evaluation(self, finding: hd.sr.CodedConcept, presence: hd.sr.CodedConcept) -> None:
        """A finding of the whole study (classification, a class answered absent): TID 1500 row 13."""
        self.evaluations.append(hd.sr.CodeContentItem(name=finding, value=presence,
                                                      relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    def outline_group(self, tracking: hd.sr.TrackingIdentifier, label: str, mask: np.ndarray, ref: ImageRef,
                      area: float | None) -> None:
        """The mask's outline as a planar ROI (TID 1410), tracked as the same finding as its SEG segment."""
        points = outline(mask)
        if points is None:
            return
        code = mv.segment_codes(label)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points,
                                   source_image=_source_image(ref))
        self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=code.type,
            finding_sites=[hd.sr.FindingSite(code.type)] if code.anatomic else None,
            algorithm_id=self.algorithm.sr_algorithm_id(),
            measurements=[hd.sr.Measurement(name=mv.AREA, value=round(area, 2), unit=_MM2)]
            if area is not None else None,
        ))

    def text(self, name: hd.sr.CodedConcept, value: str) -> None:
        value = clean_text(value)
        if value:
            self.texts.append(hd.sr.TextContentItem(name=name, value=value,
                                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    def detection(self, result: TaskResult) -> None:
        for box in result.answer.boxes:
            ref = result.images[box.image_index]
            corners = _rectangle(box.x0, box.y0, box.x1, box.y1)
            region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                       source_image=_source_image(ref))
            area = _box_area_mm2(box.x1 - box.x0, box.y1 - box.y0, ref)
            finding = mv.finding_code(box.label)
            # The finding type says what was found; a detection box is a finding present. A box around an
            # anatomical structure (anatomy detection) also has it as Finding Site (TID 1419 row 2).
            anatomic = box.label.strip().lower() in mv.ANATOMY_FINDINGS
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=self.tracking(box.label),
                referenced_region=region,
                finding_type=finding,
                finding_sites=[hd.sr.FindingSite(finding)] if anatomic else None,
                algorithm_id=self.algorithm.sr_algorithm_id(),
                measurements=[hd.sr.Measurement(name=mv.AREA, value=round(area, 2), unit=_MM2)]
                if area is not None else None,
            )
            _area_inferred_from_region(group[0], corners, ref)
            self.groups.append(group)
        self.absent(result)

    def absent(self, result: TaskResult) -> None:
        for label in result.answer.absent:
            self.evaluation(mv.finding_code(label), mv.ABSENT)

    def classification(self, result: TaskResult) -> None:
        skin = result.task is Task.SKIN_LESION_CLASSIFICATION
        table, other = (mv.SKIN_LESION_CLASSES, mv.CHEST_PATHOLOGIES) if skin else (mv.CHEST_PATHOLOGIES,
                                                                                    mv.SKIN_LESION_CLASSES)
        text = result.answer.plain_text
        named = classes_in_text(text, table)
        foreign = classes_in_text(text, other)
        for name in named:
            self.evaluation(table[name], mv.PRESENT)
        self.absent(result)
        if foreign:
            # Another task's classes (a skin lesion named for a chest radiograph): the model answered the
            # wrong question, and that answer must not reach the reader as a finding of this image.
            LOGGER.warning("%s answered with another task's class(es) %s: left out of the report",
                           result.task.value, ", ".join(foreign))
            if not named:
                title = result.task.value.replace("_", " ").capitalize()  # "Chest pathology classification"
                self.text(mv.FINDING, f"{title}: no answer among this task's classes (the model's answer was withheld)")
        # The answer's words as well only where they say more than its coded classes: a bare "pneumonia"
        # beside "Pneumonia: present" read as a second, stray finding in the text report.
        if not foreign and words_beyond(text, named):
            self.text(mv.FINDING, text)

    def segmentation(self, result: TaskResult, segs: dict[str, SegReference]) -> None:
        masks = [(m.label, m.mask) for m in [*result.answer.masks_2d, *result.answer.masks_3d]]
        for label, mask in masks:
            ref = segs.get(label)
            if ref is None:
                continue  # empty mask: not in the SEG (see seg.py); reported below as not found
            info = next(s for s in ref.seg.segments if s.label == label)
            seg_ds = ref.seg.dataset
            code = mv.segment_codes(label).type
            tracking = self.tracking(label)
            if isinstance(ref.source, VolumeRef):
                measurement = hd.sr.Measurement(name=mv.VOLUME, value=round(volume_ml(mask, ref.source), 3), unit=_ML)
                self.groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg_ds.SOPClassUID, sop_instance_uid=seg_ds.SOPInstanceUID,
                        segment_number=info.segment_number,
                        source_series=hd.sr.SourceSeriesForSegmentation(ref.source.series_instance_uid)),
                    finding_type=code, algorithm_id=self.algorithm.sr_algorithm_id(),
                    measurements=[measurement],
                ))
                k, slice_ref = _largest_slice(mask, ref.source)
                self.outline_group(tracking, label, mask[k], slice_ref, _area_mm2(mask[k], slice_ref))
            else:
                area = _area_mm2(mask, ref.source)
                self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
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
                # The area stays with the SEG reference only: viewers that merge the two groups of one
                # tracked finding (OHIF) would otherwise list it twice.
                self.outline_group(tracking, label, mask, ref.source, None)
        missing = [label for label, mask in masks if label not in segs]
        for label in missing:
            self.text(mv.FINDING, f"{label}: not found (empty segmentation)")

    def report(self, result: TaskResult) -> None:
        text = result.answer.plain_text
        lesions = classes_in_text(text, mv.SKIN_LESION_CLASSES)
        if lesions and not words_beyond(text, lesions):
            # Nothing but skin-lesion classes as a radiograph's report (a classification answer of the
            # other domain): withheld. A note that mentions, say, a history of melanoma is a report and stays.
            LOGGER.warning("%s answered only with skin-lesion class(es) %s: withheld from the report",
                           result.task.value, ", ".join(lesions))
            text = "No report: the model's answer was not a report of this image (withheld)."
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
    """Procedure Reported from CID 100 (see :data:`codes.IMAGING_PROCEDURE` for the choice)."""
    if any(r.volume is not None for r in results) or {r.task for r in results} & {Task.ABDOMINAL_ORGAN_SEGMENTATION}:
        return mv.PROCEDURE_CT
    return mv.IMAGING_PROCEDURE


def ai_generated_sr(sr_class: type[_SR], evidence: list[Dataset], content: Dataset, header: ResultHeader) -> _SR:
    """An SR document written by the algorithm: unverified, partial, with its equipment identified.

    Every SR the node writes (measurement report, text report, answers) carries the header of every
    result object (:class:`ResultHeader`) and is never complete, final or verified.
    """
    sr = sr_class(evidence=evidence, content=content, is_complete=False, is_final=False, is_verified=False,
                  **header.kwargs())
    return header.finish(sr)


def build_sr(
    results: list[TaskResult],
    evidence: list[Dataset],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    segmentations: dict[tuple[int, str], SegReference] | None = None,
    series_number: int = 9700,
    instance_number: int = 1,
    not_analysed: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """The SR of one study's results.

    ``evidence`` holds every referenced instance: the source images, the prior
    study's images (a longitudinal comparison) and the SEG objects.
    ``segmentations`` maps (index of the result, structure label) to its SEG segment.
    ``not_analysed`` names the study's images the node was sent and left out ("a decubitus film
    (ViewPosition LLD)"): a reader must not take the results for a reading of those too. With no
    ``results`` the SR says only that (a study with nothing the model could read).
    """
    if not results and not not_analysed:
        raise ValueError("results: nothing to report")
    builder = _Builder(algorithm, sop_instance_uid)
    segmentations = segmentations or {}
    for index, result in enumerate(results):
        family = result.task.family
        if family is TaskFamily.DETECTION:
            builder.detection(result)
        elif family is TaskFamily.CLASSIFICATION:
            builder.classification(result)
        elif family is TaskFamily.SEGMENTATION:
            builder.segmentation(result, {label: ref for (i, label), ref in segmentations.items() if i == index})
        elif family is TaskFamily.REPORT_GENERATION:
            builder.report(result)
        elif result.task in (Task.VQA, Task.REGION_CAPTIONING):
            builder.question_answer(result)
        elif result.task is Task.LONGITUDINAL_COMPARISON:
            builder.comparison(result, next((ds for ds in evidence
                                             if str(ds.get("StudyInstanceUID", "")) == result.prior_study_uid), None))
    covered = "The results above do not cover it." if results else f"{algorithm.name} made no results for this study."
    for note in not_analysed:
        builder.text(mv.COMMENT, f"Not analysed: {note}. {covered}")
    builder.text(_AI_NOTICE, AI_STATEMENT.format(name=algorithm.name, version=algorithm.version))
    placeholder = not builder.groups
    if placeholder:
        # highdicom builds TID 1500 with at least one measurement group; a result without any
        # (text and study-level findings only) keeps the Imaging Measurements container empty
        # (its groups are optional, TID 1500 rows 7-9), see _without_measurement_groups.
        builder.groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=builder.tracking(f"{algorithm.name} analysis"),
            finding_type=mv.CLINICAL_FINDING,
        ))

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=algorithm.observer_context()),
        procedure_reported=procedure_for(results),
        imaging_measurements=builder.groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
    )
    if placeholder:
        _without_measurement_groups(report[0])
    if builder.evaluations or builder.texts:
        container = hd.sr.ContainerContentItem(name=mv.QUALITATIVE_EVALUATIONS,
                                               relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        container.ContentSequence = builder.evaluations + builder.texts
        report[0].ContentSequence.append(container)
    sr = ai_generated_sr(hd.sr.Comprehensive3DSR, evidence, report[0],
                         ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid,
                                      instance_number, SERIES_DESCRIPTION))
    _frame_references_without_segment_number(sr)
    _template_code_meanings(sr)
    return sr


def _without_measurement_groups(root: Dataset) -> None:
    """Empty the Imaging Measurements container (no Content Sequence: PS3.3 C.17.3, Type 1C)."""
    for item in root.ContentSequence:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == "126010" and name[0].CodingSchemeDesignator == "DCM":
            del item.ContentSequence


#: Concept names whose code meaning highdicom writes in another case than the templates (PS3.16 TID 1410
#: and TID 1411 say "Source image/series for segmentation"); PixelMed's validator warns on the difference.
_TEMPLATE_MEANINGS = {("121233", "DCM"): "Source image for segmentation",
                      ("121232", "DCM"): "Source series for segmentation"}


def _template_code_meanings(item: Dataset) -> None:
    for child in item.get("ContentSequence", []):
        for name in child.get("ConceptNameCodeSequence", []):
            meaning = _TEMPLATE_MEANINGS.get((name.CodeValue, name.CodingSchemeDesignator))
            if meaning:
                name.CodeMeaning = meaning
        _template_code_meanings(child)


def _frame_references_without_segment_number(item: Dataset) -> None:
    """PS3.3 C.18.3.1: a reference to SEG frames carries no Referenced Segment Number."""
    for child in item.get("ContentSequence", []):
        for ref in child.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        _frame_references_without_segment_number(child)


# -- the same results as a text report (TID 2000), for viewers that show SR text ------------------

TEXT_SERIES_DESCRIPTION = "MedVersa report text (AI-generated, unverified)"
_REPORT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
_FINDINGS_SECTION = hd.sr.CodedConcept("121070", "DCM", "Findings")
_IMPRESSIONS_SECTION = hd.sr.CodedConcept("121072", "DCM", "Impressions")
_IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
_PROCEDURE_REPORTED = hd.sr.CodedConcept("121058", "DCM", "Procedure reported")
_LANGUAGE = hd.sr.CodedConcept("121049", "DCM", "Language of Content Item and Descendants")


def _referenced_images(item: Dataset) -> list[str]:
    """SOP Instance UIDs of the IMAGE items anywhere under a content item, in document order."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE" and "ReferencedSOPSequence" in child:
            found.append(str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found += _referenced_images(child)
    return found


def _text_lines(sr: Dataset, films: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(findings, impressions) as sentences, read back from a TID 1500 document built above.

    ``films`` names source images by SOP Instance UID ("PA film (series 1, image 2)"): where the
    measurements lie on more than one of them, each line says which, since two films' "left lung"
    lines read alike.
    """
    films = films or {}
    findings: list[str] = []
    impressions: list[str] = []
    for item in sr.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if name.CodeValue == "126010":  # Imaging Measurements: one line per tracked finding
            seen: dict[str, list[str]] = {}
            film_of: dict[str, str] = {}
            for group in item.get("ContentSequence", []):
                what, values = "", []
                for child in group.ContentSequence:
                    concept = child.ConceptNameCodeSequence[0]
                    if concept.CodeValue == "112039":
                        what = child.TextValue.rsplit(" #", 1)[0]
                    elif child.ValueType == "NUM":
                        value = child.MeasuredValueSequence[0]
                        unit = value.MeasurementUnitsCodeSequence[0].CodeValue
                        values.append(f"{concept.CodeMeaning.lower()} {value.NumericValue} {unit}")
                    elif child.ValueType == "SCOORD" and not values:
                        values.append("outlined" if len(child.GraphicData) > 10 else "boxed")
                uid = next(c.UID for c in group.ContentSequence if c.ValueType == "UIDREF")
                if any(v.startswith("volume") for v in seen.get(uid, [])):  # a volume's outline: one slice
                    values = [v.replace("area", "largest cross-section area", 1) for v in values]
                seen.setdefault(uid, [what]).extend(v for v in values if v not in seen.get(uid, []))
                named = [films[i] for i in _referenced_images(group) if i in films]
                if named:
                    film_of.setdefault(uid, named[0])
            several = len(set(film_of.values())) > 1
            for uid, (what, *values) in seen.items():
                where = f" on the {film_of[uid]}" if several and uid in film_of else ""
                findings.append(f"{what}{where}: {', '.join(dict.fromkeys(values)) or 'found'} "
                                "(AI result, see the images).")
        elif name.CodeValue == "C0034375":  # Qualitative Evaluations
            for child in item.ContentSequence:
                concept = child.ConceptNameCodeSequence[0]
                if child.ValueType == "CODE":
                    findings.append(f"{concept.CodeMeaning}: {child.ConceptCodeSequence[0].CodeMeaning.lower()}.")
                elif concept.CodeValue == mv.IMPRESSION.value:
                    impressions.append(child.TextValue)
                else:
                    plain = concept.CodeValue in (mv.FINDINGS.value, mv.FINDING.value)
                    prefix = "" if plain else f"{concept.CodeMeaning}: "
                    findings.append(prefix + child.TextValue)
    return findings, impressions


def build_text_report(
    measurement_report: Dataset,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9705,
    instance_number: int = 1,
    films: Mapping[str, str] | None = None,
) -> hd.sr.EnhancedSR:
    """The TID 1500 document's content as a Basic Diagnostic Imaging Report (TID 2000) in an Enhanced SR.

    Why: the report text, the study-level findings and the measurements are all in the TID 1500
    document, but web viewers such as OHIF 3 show a TID 1500 document only as its measurement
    groups drawn on the images and never show its text. They do show other SR documents as text.
    This document says the same, in sentences (Findings and Impressions sections, TID 2001), and is
    likewise AI-generated, unverified and partial. It lives in a series of its own, as a viewer
    shows one document per SR series. ``films`` names the source images by SOP Instance UID, for
    lines of a study whose measurements lie on several (:func:`_text_lines`).
    """
    findings, impressions = _text_lines(measurement_report, films)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=_REPORT_TITLE, is_content_continuous=False, template_id="2000")
    items: list[hd.sr.ContentItem] = [hd.sr.CodeContentItem(
        name=_LANGUAGE, value=hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)"),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)]
    items += list(hd.sr.ObservationContext(observer_device_context=algorithm.observer_context()))
    procedure = next(i for i in measurement_report.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "121058").ConceptCodeSequence[0]
    items.append(hd.sr.CodeContentItem(
        name=_PROCEDURE_REPORTED, value=hd.sr.CodedConcept(procedure.CodeValue, procedure.CodingSchemeDesignator,
                                                            procedure.CodeMeaning),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD))
    for section, name, lines in ((_FINDINGS_SECTION, mv.FINDING, findings),
                                 (_IMPRESSIONS_SECTION, _IMPRESSION, impressions)):
        if not lines:
            continue
        # CONTINUOUS: a viewer runs the sentences together as wrapped text (OHIF shows SEPARATE ones unwrapped).
        container = hd.sr.ContainerContentItem(name=section, relationship_type=contains)
        container.ContentSequence = [hd.sr.TextContentItem(name=name, value=clean_text(line),
                                                           relationship_type=contains)
                                     for line in lines if clean_text(line)]
        items.append(container)
    root.ContentSequence = items
    return ai_generated_sr(hd.sr.EnhancedSR, [measurement_report], root,
                           ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid,
                                        instance_number, TEXT_SERIES_DESCRIPTION))
