"""Reader annotation objects as viewers store them, for the ask tests.

:func:`ohif_measurement_report` builds the Enhanced SR that OHIF 3.13's "Create report" stores
(dcmjs ``StructuredReport`` + ``TID1500MeasurementReport``, cornerstone3D adapters), facts read from
dcmjs and the cornerstone3D adapters: root (126000, DCM) with template 1500; an Image Library;
Imaging Measurements (126010) holding one Measurement Group (125007) per tool, each with Tracking
Identifier "Cornerstone3DTools@^0.1.0:<tool>" and a Tracking Unique Identifier; a RectangleROI as
NUM (131191004, SCT) "Perimeter" INFERRED FROM a closed SCOORD POLYLINE of 5 points (corners 0, 1,
3, 2, 0) plus a NUM Area; an ArrowAnnotate as NUM (111010, DCM) INFERRED FROM a SCOORD POINT whose
Graphic Data holds the tip and the tail (dcmjs keeps both); each SCOORD SELECTED FROM an IMAGE item;
the label as a TEXT (121106, DCM) "Comment" in the group. The legacy label, a Finding coded
(CORNERSTONEFREETEXT, CORNERSTONEJS, label), is what :func:`legacy_arrow_report` writes.

:func:`gsps_with_text` builds a Grayscale Softcopy Presentation State with a rectangle (closed
POLYLINE, PIXEL units) and a text object anchored next to it, as a PACS viewer stores them.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from .dicom_factory import base_dataset

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(relationship: str, value_type: str, name: tuple[str, str, str], **attrs) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(*name)]
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _image_item(image: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    item = Dataset()
    item.RelationshipType = "SELECTED FROM"
    item.ValueType = "IMAGE"
    item.ReferencedSOPSequence = [ref]
    return item


def _scoord(graphic_type: str, data: list[float], image: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = "INFERRED FROM"
    item.ValueType = "SCOORD"
    item.GraphicType = graphic_type
    item.GraphicData = [float(v) for v in data]
    item.ContentSequence = [_image_item(image)]
    return item


def _num(name: tuple[str, str, str], value: float, unit: tuple[str, str, str], child: Dataset | None) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{value:.4g}"
    measured.MeasurementUnitsCodeSequence = [_code(*unit)]
    item = _item("CONTAINS", "NUM", name, MeasuredValueSequence=[measured])
    if child is not None:
        item.ContentSequence = [child]
    return item


def _group(tool: str, content: list[Dataset], label: str | None, legacy: bool = False) -> Dataset:
    group = _item("CONTAINS", "CONTAINER", ("125007", "DCM", "Measurement Group"), ContinuityOfContent="SEPARATE")
    items = [_item("HAS OBS CONTEXT", "TEXT", ("112039", "DCM", "Tracking Identifier"),
                   TextValue=f"Cornerstone3DTools@^0.1.0:{tool}"),
             _item("HAS OBS CONTEXT", "UIDREF", ("112040", "DCM", "Tracking Unique Identifier"), UID=generate_uid())]
    if legacy and label is not None:
        items.append(_item("CONTAINS", "CODE", ("121071", "DCM", "Finding"),
                           ConceptCodeSequence=[_code("CORNERSTONEFREETEXT", "CORNERSTONEJS", label)]))
    items += content
    if not legacy and label is not None:
        items.append(_item("CONTAINS", "TEXT", ("121106", "DCM", "Comment"), TextValue=label))
    group.ContentSequence = items
    return group


def rectangle_group(image: Dataset, box: tuple[float, float, float, float], label: str | None) -> Dataset:
    """A RectangleROI: corners (x0,y0), (x1,y0), (x1,y1), (x0,y1) and back to the first (POLYLINE)."""
    x0, y0, x1, y1 = box
    polyline = _scoord("POLYLINE", [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0], image)
    perimeter = 2 * ((x1 - x0) + (y1 - y0))
    return _group("RectangleROI", [
        _num(("131191004", "SCT", "Perimeter"), perimeter, ("mm", "UCUM", "mm"), polyline),
        _num(("42798000", "SCT", "Area"), (x1 - x0) * (y1 - y0), ("mm2", "UCUM", "mm2"), None),
    ], label)


def arrow_group(image: Dataset, tip: tuple[float, float], tail: tuple[float, float], label: str | None,
                legacy: bool = False) -> Dataset:
    """An ArrowAnnotate: a SCOORD POINT under NUM (111010, DCM), Graphic Data tip then tail."""
    point = _scoord("POINT", [*tip, *tail], image)
    return _group("ArrowAnnotate", [_num(("111010", "DCM", "Center"), 0, ("1", "UCUM", "no units"), point)],
                  label, legacy)


def ohif_measurement_report(image: Dataset, groups: list[Dataset], *, description: str = "Reader questions",
                            series_number: int = 4700, manufacturer: str = "dcmjs") -> Dataset:
    """The Enhanced SR of OHIF 3.13's "Create report" with ``groups`` on ``image``."""
    ds = base_dataset(ENHANCED_SR, "SR", study_uid=str(image.StudyInstanceUID), series_number=series_number)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber"):
        if keyword in image:
            setattr(ds, keyword, image.get(keyword))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    ds.ContentDate, ds.ContentTime = "20240102", "101500"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    ds.ContentTemplateSequence = [template]
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    evidence_ref = Dataset()
    evidence_ref.ReferencedSOPClassUID = image.SOPClassUID
    evidence_ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedSOPSequence = [evidence_ref]
    study = Dataset()
    study.StudyInstanceUID = image.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    library_group = _item("CONTAINS", "CONTAINER", ("126200", "DCM", "Image Library Group"),
                          ContinuityOfContent="SEPARATE")
    entry = _image_item(image)
    entry.RelationshipType = "CONTAINS"
    library_group.ContentSequence = [entry]
    library = _item("CONTAINS", "CONTAINER", ("111028", "DCM", "Image Library"), ContinuityOfContent="SEPARATE")
    library.ContentSequence = [library_group]
    measurements = _item("CONTAINS", "CONTAINER", ("126010", "DCM", "Imaging Measurements"),
                         ContinuityOfContent="SEPARATE")
    measurements.ContentSequence = groups
    ds.ContentSequence = [
        _item("HAS CONCEPT MOD", "CODE", ("121049", "DCM", "Language of Content Item and Descendants"),
              ConceptCodeSequence=[_code("eng", "RFC5646", "English")]),
        _item("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"), PersonName="Reader^Radiologist"),
        _item("HAS CONCEPT MOD", "CODE", ("121058", "DCM", "Procedure reported"),
              ConceptCodeSequence=[_code("1", "99dcmjs", "Unknown procedure")]),
        library, measurements]
    ds.InstanceNumber = 1
    return ds


def gsps_with_text(image: Dataset, box: tuple[float, float, float, float], text: str,
                   anchor: tuple[float, float] | None = None, *, manufacturer: str = "PACS viewer",
                   description: str = "Annotations") -> Dataset:
    """A GSPS on ``image`` with one rectangle (closed POLYLINE) and one text anchored beside it."""
    ds = base_dataset(GSPS, "PR", study_uid=str(image.StudyInstanceUID), series_number=4800)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber"):
        if keyword in image:
            setattr(ds, keyword, image.get(keyword))
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    ds.ContentLabel = "ANNOTATIONS"
    ds.ContentDescription = "reader annotations"
    ds.PresentationCreationDate, ds.PresentationCreationTime = "20240102", "101500"
    ds.ContentCreatorName = "Reader^Radiologist"
    ds.InstanceNumber = 1
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = [ref]
    ds.ReferencedSeriesSequence = [series]
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [int(image.Columns), int(image.Rows)]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = [area]
    layer = Dataset()
    layer.GraphicLayer = "READER"
    layer.GraphicLayerOrder = 1
    ds.GraphicLayerSequence = [layer]
    x0, y0, x1, y1 = box
    rectangle = Dataset()
    rectangle.GraphicAnnotationUnits = "PIXEL"
    rectangle.GraphicDimensions = 2
    rectangle.NumberOfGraphicPoints = 5
    rectangle.GraphicData = [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1, x0, y0)]
    rectangle.GraphicType = "POLYLINE"
    rectangle.GraphicFilled = "N"
    label = Dataset()
    label.UnformattedTextValue = text
    label.AnchorPointAnnotationUnits = "PIXEL"
    label.AnchorPoint = [float(v) for v in (anchor or (x1 + 2, y0))]
    label.AnchorPointVisibility = "Y"
    annotation = Dataset()
    annotation.ReferencedImageSequence = [ref]
    annotation.GraphicLayer = "READER"
    annotation.GraphicObjectSequence = [rectangle]
    annotation.TextObjectSequence = [label]
    ds.GraphicAnnotationSequence = [annotation]
    # Presentation LUT and VOI: identity, as a viewer without a window change writes them.
    ds.PresentationLUTShape = "IDENTITY"
    return ds
