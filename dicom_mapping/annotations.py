"""A reader's annotations, read from the objects a viewer stores: TID 1500 SR and GSPS.

A radiologist draws on an image (rectangle, ellipse, freehand outline, arrow) and types a label;
the viewer stores the marks in the PACS, which routes them to the node like any other object.
This module recognises such an object and reads its regions; it knows nothing of networking.

- **Measurement report SR** (TID 1500, PS3.16 A.35; Enhanced, Comprehensive or Comprehensive 3D
  SR): every measurement group (TID 1501 / 1410, concept (125007, DCM) "Measurement Group") with
  an image SCOORD (PS3.3 C.18.6) is a region. The way OHIF 3 (cornerstone3D adapters on dcmjs's
  TID 300 writers) stores them: the SCOORD sits under a NUM item by INFERRED FROM (a rectangle:
  NUM "Perimeter"/"Area" with a closed POLYLINE of 5 points; an arrow: NUM (111010, DCM) with a
  POINT whose Graphic Data may hold the tip and the tail) or directly in the group, and the
  SCOORD selects its image by an IMAGE item (SELECTED FROM). The label is a TEXT item (121106,
  DCM) "Comment" in the group; older writers put it in a Finding (121071, DCM) or Finding Site
  CODE item coded (CORNERSTONEFREETEXT, CORNERSTONEJS, *label*). Both are read.
- **Grayscale Softcopy Presentation State** (PS3.3 A.33.1, C.10.5 Graphic Annotation): per
  Graphic Annotation Sequence item and referenced image, each graphic object (PIXEL or DISPLAY
  units) is a region, and a text object labels the graphic nearest to its anchor point or
  bounding box; a text with an anchor point and no graphic is a point region.

Never a region: objects the node made itself (:func:`own_result_reason`: Manufacturer, Contributing
Equipment, the results' series description marker) and SCOORD3D (no image coordinates).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom import Dataset

from . import header as h

#: SR storage classes that carry measurement reports with image coordinates (PS3.4 B.5).
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
GRAYSCALE_SOFTCOPY_PS = "1.2.840.10008.5.1.4.1.1.11.1"
SR_ANNOTATION_CLASSES = frozenset({ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR})
#: Every SOP class the node reads reader annotations from (the SCP accepts them).
ANNOTATION_CLASSES: dict[str, str] = {
    ENHANCED_SR: "Enhanced SR Storage",
    COMPREHENSIVE_SR: "Comprehensive SR Storage",
    COMPREHENSIVE_3D_SR: "Comprehensive 3D SR Storage",
    GRAYSCALE_SOFTCOPY_PS: "Grayscale Softcopy Presentation State Storage",
}

_MEASUREMENT_GROUP = ("125007", "DCM")
_COMMENT = ("121106", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_SITES = {("363698007", "SCT"), ("G-C0E3", "SRT")}
_FREE_TEXT_CODES = {"CORNERSTONEFREETEXT", "CS3DTEXT"}
#: cornerstone3D's (TextPosition, 99CS3D) "Text Annotation Position": where the label box sits, not a region.
_TEXT_POSITION = "TextPosition"
_TRACKING_IDENTIFIER = ("112039", "DCM")

#: Graphic types a region may have (SCOORD, PS3.3 C.18.6.1.2; GSPS adds INTERPOLATED, C.10.5.1.2).
GRAPHIC_TYPES = frozenset({"POINT", "MULTIPOINT", "POLYLINE", "CIRCLE", "ELLIPSE"})

#: Labels that ask what the region shows: its caption is the answer.
_WHAT_IS_THIS = frozenset({"what", "what is this", "what is it", "what s this", "what is that", "describe",
                           "describe this", "describe this region", "what is here"})
#: Words a question starts with (a label ending in "?" is one too).
_QUESTION_WORDS = frozenset({
    "what", "which", "where", "why", "how", "who", "is", "are", "was", "were", "does", "do", "did", "can",
    "could", "should", "would", "will", "has", "have", "any", "describe", "explain", "tell"})


@dataclass(frozen=True)
class ImageReference:
    """The image a region is drawn on (PS3.3 C.18.6: a SCOORD selects one image or frame)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str = ""
    #: 1-based frame of a multi-frame image; None for a single-frame image.
    frame: int | None = None


@dataclass(frozen=True)
class Region:
    """One region a reader drew, in image coordinates (column, row) of its image, PS3.3 C.18.6.1.1:
    (0, 0) is the top left corner of the top left pixel."""

    graphic_type: str
    points: np.ndarray = field(compare=False)
    image: ImageReference
    #: The reader's label ("" when none).
    label: str = ""
    #: Where it came from in the object, for notes ("measurement group 2", "graphic 1 of layer 'ai'").
    origin: str = ""
    #: The reader's tracking identifier (SR) or graphic layer (GSPS), when given.
    tracking: str = ""
    #: PIXEL, or DISPLAY (GSPS: fractions of the image, scaled by :func:`in_pixels` once its size is known).
    units: str = "PIXEL"

    @property
    def question(self) -> str:
        """The label when it is a question (VQA), else ""."""
        return self.label.strip() if is_question(self.label) else ""


@dataclass
class Annotation:
    """A reader's annotation object and its regions."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    kind: str  # "SR" or "GSPS"
    regions: list[Region] = field(default_factory=list)
    #: Why a group or graphic was not read (SCOORD3D, no image reference, unknown graphic type).
    skipped: list[str] = field(default_factory=list)


def is_question(label: str) -> bool:
    """A label is a question when it ends in "?" (more than a bare "?") or opens with a question word.

    A bare "?" (or "what is this") asks what the region shows: the region's caption answers it.
    """
    text = label.strip()
    if not text or set(text) <= {"?", " "}:
        return False
    words = re.findall(r"[a-z]+", text.lower())
    if " ".join(words) in _WHAT_IS_THIS:
        return False
    if text.endswith("?"):
        return True
    return bool(words) and words[0] in _QUESTION_WORDS and len(words) > 1


def own_result_reason(ds: Dataset, manufacturer: str, series_marker: str = "MedVersa",
                      device_uids: frozenset[str] = frozenset()) -> str:
    """Why ``ds`` is one of the node's own results (an empty string when it is not).

    Checked, as IHE AIR marks results: Manufacturer (0008,0070), Contributing Equipment Sequence
    (0018,A001) items naming our manufacturer or device UID, and the results' series description marker.
    """
    ours = manufacturer.strip().lower()
    if ours and h.text(ds, "Manufacturer").strip().lower() == ours:
        return f"Manufacturer is {manufacturer}"
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        if ours and str(item.get("Manufacturer", "") or "").strip().lower() == ours:
            return f"Contributing Equipment names {manufacturer}"
        if str(item.get("DeviceUID", "") or "") in device_uids:
            return "Contributing Equipment names the node's model (Device UID)"
    if series_marker and series_marker.lower() in h.text(ds, "SeriesDescription").lower():
        return f"series description marked {series_marker}"
    return ""


def read_annotation(ds: Dataset) -> tuple[Annotation | None, str]:
    """The reader's regions in ``ds``, or None and why it is not a reader annotation object.

    Never raises: a malformed object gives None and a reason.
    """
    sop_class = h.sop_class_uid(ds)
    if sop_class not in ANNOTATION_CLASSES:
        return None, f"SOP class {sop_class or '(none)'} carries no reader annotations"
    annotation = Annotation(sop_class, h.sop_instance_uid(ds), h.text(ds, "SeriesInstanceUID"),
                            h.text(ds, "StudyInstanceUID"), "GSPS" if sop_class == GRAYSCALE_SOFTCOPY_PS else "SR")
    try:
        if annotation.kind == "GSPS":
            _read_gsps(ds, annotation)
        else:
            _read_sr(ds, annotation)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        return None, f"malformed {annotation.kind}: {type(exc).__name__}: {exc}"
    if not annotation.regions:
        why = "; ".join(annotation.skipped[:3])
        what = "measurement group with image coordinates" if annotation.kind == "SR" else "graphic annotation"
        return None, f"no {what}" + (f" ({why})" if why else "")
    return annotation, ""


# -- SR -----------------------------------------------------------------------------------------


def _concept(item: Dataset) -> tuple[str, str]:
    names = item.get("ConceptNameCodeSequence") or []
    return (str(names[0].CodeValue), str(names[0].CodingSchemeDesignator)) if names else ("", "")


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _series_of(ds: Dataset) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID from the evidence sequences (PS3.3 C.17.2.3) and, for
    GSPS, the Referenced Series Sequence (C.11.11)."""
    found: dict[str, str] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []) or []:
            for series in study.get("ReferencedSeriesSequence", []) or []:
                for ref in series.get("ReferencedSOPSequence", []) or []:
                    found[str(ref.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        for ref in series.get("ReferencedImageSequence", []) or []:
            found[str(ref.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    return found


def _groups(item: Dataset) -> list[Dataset]:
    """Every measurement group container below ``item``."""
    found = []
    for child in _children(item):
        if child.get("ValueType") == "CONTAINER" and _concept(child) == _MEASUREMENT_GROUP:
            found.append(child)
        elif child.get("ValueType") == "CONTAINER":
            found.extend(_groups(child))
    return found


def _scoords(item: Dataset) -> list[Dataset]:
    """SCOORD / SCOORD3D items of a group: directly in it or under its NUM items (INFERRED FROM)."""
    found = []
    for child in _children(item):
        if child.get("ValueType") in ("SCOORD", "SCOORD3D"):
            if _concept(child)[0] != _TEXT_POSITION:
                found.append(child)
        elif child.get("ValueType") == "NUM":
            found.extend(_scoords(child))
    return found


def _label(group: Dataset) -> str:
    """The reader's label: a Comment TEXT item, else a free-text Finding / Finding Site code meaning."""
    for child in _children(group):
        if child.get("ValueType") == "TEXT" and _concept(child) == _COMMENT:
            return str(child.TextValue).strip()
    for child in _children(group):
        if child.get("ValueType") == "CODE" and (_concept(child) == _FINDING or _concept(child) in _FINDING_SITES):
            code = (child.get("ConceptCodeSequence") or [None])[0]
            if code is not None and str(code.CodeValue) in _FREE_TEXT_CODES:
                return str(code.CodeMeaning).strip()
    return ""


def _tracking(group: Dataset) -> str:
    for child in _children(group):
        if child.get("ValueType") == "TEXT" and _concept(child) == _TRACKING_IDENTIFIER:
            return str(child.TextValue)
    return ""


def _image_of(scoord: Dataset, series: dict[str, str]) -> ImageReference | None:
    for child in _children(scoord):
        if child.get("ValueType") == "IMAGE":
            ref = child.ReferencedSOPSequence[0]
            uid = str(ref.ReferencedSOPInstanceUID)
            return ImageReference(str(ref.ReferencedSOPClassUID), uid, series.get(uid, ""),
                                  _first_int(ref.get("ReferencedFrameNumber")))
    return None


def _read_sr(ds: Dataset, annotation: Annotation) -> None:
    series = _series_of(ds)
    for number, group in enumerate(_groups(ds), start=1):
        where = f"measurement group {number}"
        scoords = _scoords(group)
        if not scoords:
            annotation.skipped.append(f"{where}: no spatial coordinates")
            continue
        scoord = scoords[0]
        if scoord.ValueType == "SCOORD3D":
            annotation.skipped.append(f"{where}: 3D coordinates (SCOORD3D), no image coordinates")
            continue
        image = _image_of(scoord, series)
        graphic_type = str(scoord.GraphicType).upper()
        if image is None:
            annotation.skipped.append(f"{where}: the SCOORD selects no image")
            continue
        points = np.asarray([float(v) for v in scoord.GraphicData], dtype=float).reshape(-1, 2)
        if graphic_type == "POINT":
            points = points[:1]  # dcmjs may store the arrow's tail after its tip
        if graphic_type not in GRAPHIC_TYPES or not len(points):
            annotation.skipped.append(f"{where}: graphic type {graphic_type} is not read")
            continue
        annotation.regions.append(Region(graphic_type, points, image, _label(group), where, _tracking(group)))


# -- GSPS ---------------------------------------------------------------------------------------


def _gsps_points(obj: Dataset, units: str, rows: int, cols: int) -> tuple[np.ndarray, str]:
    """Points in pixels where the size is known; DISPLAY units (fractions of the displayed area, C.10.4)
    stay fractions otherwise."""
    points = np.asarray([float(v) for v in obj.GraphicData], dtype=float).reshape(-1, 2)
    if units == "DISPLAY" and rows and cols:
        return points * [cols, rows], "PIXEL"
    return points, "DISPLAY" if units == "DISPLAY" else "PIXEL"


def in_pixels(region: Region, rows: int, cols: int) -> Region:
    """``region`` in pixel coordinates of its ``cols`` x ``rows`` image (DISPLAY units scaled)."""
    if region.units != "DISPLAY":
        return region
    return replace(region, points=region.points * [cols, rows], units="PIXEL")


def _read_gsps(ds: Dataset, annotation: Annotation) -> None:
    series = _series_of(ds)
    sizes = _displayed_sizes(ds)
    for layer_number, layer in enumerate(ds.get("GraphicAnnotationSequence", []) or [], start=1):
        name = str(layer.get("GraphicLayer", "") or "")
        refs = list(layer.get("ReferencedImageSequence", []) or []) or _all_referenced_images(ds)
        graphics: list[tuple[str, np.ndarray]] = []
        for obj in layer.get("GraphicObjectSequence", []) or []:
            kind = str(obj.GraphicType).upper()
            kind = "POLYLINE" if kind == "INTERPOLATED" else kind
            if kind not in GRAPHIC_TYPES:
                annotation.skipped.append(f"layer {layer_number}: graphic type {kind} is not read")
                continue
            graphics.append((kind, obj))
        texts = list(layer.get("TextObjectSequence", []) or [])
        for ref in refs:
            uid = str(ref.ReferencedSOPInstanceUID)
            rows, cols = sizes.get(uid, (0, 0))
            image = ImageReference(str(ref.ReferencedSOPClassUID), uid, series.get(uid, ""),
                                   _first_int(ref.get("ReferencedFrameNumber")))
            placed = [(kind, *_gsps_points(obj, str(obj.GraphicAnnotationUnits).upper(), rows, cols))
                      for kind, obj in graphics]
            labels = _pair_texts(texts, [(kind, points) for kind, points, _ in placed], rows, cols)
            for k, (kind, points, units) in enumerate(placed):
                if kind == "POINT":
                    points = points[:1]
                annotation.regions.append(Region(kind, points, image, labels.get(k, ""),
                                                 f"graphic {k + 1} of layer {layer_number}", name, units))
            for text, anchor in labels.get(-1, []):  # a text with an anchor and no graphic: a point
                annotation.regions.append(Region("POINT", anchor, image, text, f"text of layer {layer_number}", name))


def _displayed_sizes(ds: Dataset) -> dict[str, tuple[int, int]]:
    """Image size (rows, columns) per referenced image, from Displayed Area Selection's bottom right
    corner (PS3.3 C.10.4, in pixels) where given; (0, 0) where not (DISPLAY units then stay fractions)."""
    sizes: dict[str, tuple[int, int]] = {}
    for item in ds.get("DisplayedAreaSelectionSequence", []) or []:
        corner = item.get("DisplayedAreaBottomRightHandCorner")
        refs = item.get("ReferencedImageSequence", []) or _all_referenced_images(ds)
        if corner is not None:
            for ref in refs:
                sizes[str(ref.ReferencedSOPInstanceUID)] = (int(corner[1]), int(corner[0]))
    return sizes


def _all_referenced_images(ds: Dataset) -> list[Dataset]:
    return [ref for series in ds.get("ReferencedSeriesSequence", []) or []
            for ref in series.get("ReferencedImageSequence", []) or []]


def _text_anchor(text: Dataset, rows: int, cols: int) -> np.ndarray | None:
    scale = [cols or 1, rows or 1]
    if "AnchorPoint" in text:
        point = np.asarray([float(v) for v in text.AnchorPoint], dtype=float)
        return point * scale if str(text.get("AnchorPointAnnotationUnits", "PIXEL")).upper() == "DISPLAY" else point
    if "BoundingBoxTopLeftHandCorner" in text:
        corners = np.asarray([[float(v) for v in text.BoundingBoxTopLeftHandCorner],
                              [float(v) for v in text.BoundingBoxBottomRightHandCorner]], dtype=float)
        centre = corners.mean(axis=0)
        return centre * scale if str(text.get("BoundingBoxAnnotationUnits", "PIXEL")).upper() == "DISPLAY" else centre
    return None


def _pair_texts(texts: list[Dataset], graphics: list[tuple[str, np.ndarray]], rows: int, cols: int) -> dict:
    """Graphic index -> its label (the text anchored nearest to it); -1 -> texts with an anchor and no graphic."""
    labels: dict = {}
    for text in texts:
        value = str(text.get("UnformattedTextValue", "") or "").strip()
        anchor = _text_anchor(text, rows, cols)
        if not graphics:
            if anchor is not None:
                labels.setdefault(-1, []).append((value, anchor.reshape(1, 2)))
            continue
        if anchor is None:
            k = next((i for i in range(len(graphics)) if i not in labels), 0)
        else:
            k = int(np.argmin([_distance_to_box(anchor, points) for _, points in graphics]))
        labels[k] = f"{labels[k]} {value}".strip() if k in labels else value
    return labels


def _distance_to_box(point: np.ndarray, points: np.ndarray) -> float:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return float(np.linalg.norm(np.maximum(0, np.maximum(lo - point, point - hi))))


# -- geometry -----------------------------------------------------------------------------------


def bounding_box(region: Region, rows: int, cols: int, point_fraction: float = 0.2
                 ) -> tuple[float, float, float, float]:
    """The region's box (x0, y0, x1, y1) in pixels, inside the ``cols`` x ``rows`` image.

    POLYLINE / MULTIPOINT: the points' extent. CIRCLE (centre, a point on the circle) and ELLIPSE
    (the ends of the major then the minor axis, PS3.3 C.18.6.1.2): the curve's exact extent. POINT
    (an arrow's tip): a square of ``point_fraction`` of the image's shorter side centred on it, the
    neighbourhood the reader points at. A box thinner than 2 pixels is widened to 2.
    """
    p = region.points
    if region.graphic_type == "CIRCLE":
        r = float(np.linalg.norm(p[1] - p[0]))
        lo, hi = p[0] - r, p[0] + r
    elif region.graphic_type == "ELLIPSE":
        centre = (p[0] + p[1]) / 2
        u, v = (p[1] - p[0]) / 2, (p[3] - p[2]) / 2
        half = np.array([math.hypot(u[0], v[0]), math.hypot(u[1], v[1])])
        lo, hi = centre - half, centre + half
    elif region.graphic_type == "POINT":
        half = point_fraction * min(rows, cols) / 2
        lo, hi = p[0] - half, p[0] + half
    else:
        lo, hi = p.min(axis=0), p.max(axis=0)
    if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= cols or lo[1] >= rows:
        raise ValueError(f"{region.origin}: region {region.graphic_type} {p.tolist()} lies outside the "
                         f"{cols}x{rows} image")
    x0, x1 = _span(float(lo[0]), float(hi[0]), cols)
    y0, y1 = _span(float(lo[1]), float(hi[1]), rows)
    return (x0, y0, x1, y1)


def _span(lo: float, hi: float, size: int) -> tuple[float, float]:
    """[lo, hi] clipped to [0, size], at least 2 pixels wide (a degenerate outline is still a place)."""
    lo, hi = max(0.0, lo), min(float(size), hi)
    if hi - lo < 2:
        centre = (lo + hi) / 2
        lo = min(max(0.0, centre - 1), max(0.0, size - 2.0))
        hi = min(float(size), lo + 2)
    return lo, hi


def _first_int(value: object) -> int | None:
    """The first value of an IS attribute that may hold one or several (Referenced Frame Number)."""
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float):
        return int(value)
    values = list(value)  # type: ignore[call-overload]
    return int(values[0]) if values else None
