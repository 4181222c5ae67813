"""The answer to a reader's annotations: a TID 1500 Measurement Report in a Comprehensive 3D SR.

A viewer shows it next to the reader's own marks (PS3.3 A.35.13, PS3.16 TID 1500 / 1410):

- one measurement group per region the reader drew, with the reader's SCOORD copied unchanged
  (same graphic type, same points, same image and frame), so a viewer draws the answer where
  the reader drew the question;
- in the group: the answer as a Comment (121106, DCM) TEXT item, which is the text OHIF 3 shows
  as a measurement's label once the reader tracks the answer's measurements (its SR display labels
  a group with a SCOORD of its own only from NUMs and Finding Site); the question (the reader's
  label) and the region's description, each as a TEXT item of its own; and a COMPOSITE item
  referencing the reader's annotation object (its SOP instance), which is also cited in Current
  Requested Procedure Evidence;
- the algorithm as device observer and in every group (TID 4019), Contributing Equipment
  (IHE AIR), "AI-generated, unverified" in the series description and a statement in the
  document; Verification Flag UNVERIFIED, Completion Flag PARTIAL.

UIDs are the caller's: they derive from the ask job's own key (never the study's main SR's).
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from . import codes as mv
from .annotations import Region
from .identity import AlgorithmInfo, derive_uid
from .result_header import ResultHeader
from .sr import AI_STATEMENT, ai_generated_sr, clean_text

SERIES_DESCRIPTION = "MedVersa answers (AI-generated, unverified)"
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
QUESTION = hd.sr.CodedConcept("question", mv.PRIVATE, "Question")
ANSWER = hd.sr.CodedConcept("answer", mv.PRIVATE, "Answer")
REGION_DESCRIPTION = hd.sr.CodedConcept("region-caption", mv.PRIVATE, "Region description")
READER_ANNOTATION = hd.sr.CodedConcept("reader-annot", mv.PRIVATE, "Reader annotation object")
AI_NOTICE = hd.sr.CodedConcept("ai-notice", mv.PRIVATE, "AI-generated content notice")
#: The finding type of an answer group: what the reader pointed at, as the model described it.
FINDING_TYPE = mv.FINDING


@dataclass(frozen=True)
class RegionAnswer:
    """What the model said about one region (texts are empty where a task did not run)."""

    region: Region
    #: Region captioning of the region's bounding box.
    caption: str = ""
    #: The reader's question (the label, when it is one) and the VQA answer to it.
    question: str = ""
    answer: str = ""
    #: Why something was not answered (a task the model does not declare, say).
    note: str = ""

    @property
    def shown(self) -> str:
        """The text a viewer shows at the region: the answer, else the caption, else the note."""
        text = self.answer if self.question and self.answer else self.caption
        return clean_text(text) or clean_text(self.note) or "no answer"


def _graphic(region: Region) -> tuple[hd.sr.GraphicTypeValues, np.ndarray]:
    points = np.asarray(region.points, dtype=float)
    if region.graphic_type == "POLYLINE" and len(points) >= 3 and not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])  # PS3.3 C.18.6.1.2: a closed outline repeats its first point
    return hd.sr.GraphicTypeValues(region.graphic_type), points


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem | None:
    value = clean_text(value)
    if not value:
        return None
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def build_answer_sr(
    answers: list[RegionAnswer],
    annotation: Dataset | None,
    images: list[Dataset],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9710,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """The SR answering the regions of ``annotation`` (the reader's SR or GSPS) drawn on ``images``.

    ``annotation`` is None for a question asked without an annotation object (``medversa ask``): the
    groups then reference no reader's object.

    Raises ValueError when there is nothing to answer or a region's image is not in ``images``.
    """
    if not answers:
        raise ValueError("answers: no region to answer")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    groups = []
    for number, item in enumerate(answers, start=1):
        ref = item.region.image
        if ref.sop_instance_uid not in by_uid:
            raise ValueError(f"answers[{number - 1}]: image {ref.sop_instance_uid} is not among the images given")
        graphic_type, points = _graphic(item.region)
        region = hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=points,
                                   source_image=hd.sr.SourceImageForRegion(
                                       ref.sop_class_uid, ref.sop_instance_uid, [ref.frame] if ref.frame else None))
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derive_uid(algorithm.org_root, sop_instance_uid, "track", str(number)),
                identifier=f"answer #{number}: {item.region.label or item.region.origin}"[:64]),
            referenced_region=region,
            finding_type=FINDING_TYPE,
            algorithm_id=algorithm.sr_algorithm_id(),
        )
        extra = [_text(COMMENT, item.shown), _text(QUESTION, item.question), _text(ANSWER, item.answer),
                 _text(REGION_DESCRIPTION, item.caption)]
        if annotation is not None:
            extra.append(hd.sr.CompositeContentItem(name=READER_ANNOTATION,
                                                    referenced_sop_class_uid=str(annotation.SOPClassUID),
                                                    referenced_sop_instance_uid=str(annotation.SOPInstanceUID),
                                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        group[0].ContentSequence.extend(x for x in extra if x is not None)
        groups.append(group)

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=algorithm.observer_context()),
        procedure_reported=mv.IMAGING_PROCEDURE,
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
    )
    container = hd.sr.ContainerContentItem(name=mv.QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [_text(AI_NOTICE, AI_STATEMENT.format(name=algorithm.name,
                                                                      version=algorithm.version))]
    report[0].ContentSequence.append(container)
    evidence = list({str(ds.SOPInstanceUID): ds for ds in [*images, *([annotation] if annotation else [])]}.values())
    return ai_generated_sr(hd.sr.Comprehensive3DSR, evidence, report[0],
                           ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid,
                                        instance_number, SERIES_DESCRIPTION))


def read_answers(sr: Dataset) -> list[dict]:
    """The answer groups of an SR built by :func:`build_answer_sr`, as plain dicts (for tests and the
    ``ask`` command's output): graphic type and data, image, texts and the referenced annotation."""
    found = []
    for item in sr.ContentSequence:
        if _code_value(item) != "126010":
            continue
        for group in item.get("ContentSequence", []):
            entry: dict = {}
            for child in group.ContentSequence:
                code = _code_value(child)
                if child.ValueType == "SCOORD":
                    image = child.ContentSequence[0].ReferencedSOPSequence[0]
                    entry.update(graphic_type=str(child.GraphicType),
                                 graphic_data=[float(v) for v in child.GraphicData],
                                 image=str(image.ReferencedSOPInstanceUID))
                elif child.ValueType == "TEXT":
                    entry[{"121106": "comment", QUESTION.value: "question", ANSWER.value: "answer",
                           REGION_DESCRIPTION.value: "caption"}.get(code, code)] = str(child.TextValue)
                elif child.ValueType == "COMPOSITE":
                    entry["annotation"] = str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            found.append(entry)
    return found


def _code_value(item: Dataset) -> str:
    """Concept name code value of a content item, read from a file or built in memory (highdicom)."""
    name = item.ConceptNameCodeSequence[0]
    if isinstance(name, hd.sr.CodedConcept):
        return str(name.value)
    return str(name.get("CodeValue") or name.get("LongCodeValue") or name.get("URNCodeValue") or "")
