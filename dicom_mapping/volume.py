"""A CT series as one volume: slices sorted along the slice normal, Hounsfield units, geometry.

Geometry comes from the Image Plane module (PS3.3 C.7.6.2: Image Position/Orientation (Patient),
Pixel Spacing) of single-frame CT Image instances, or from the Plane Position / Plane Orientation /
Pixel Measures functional groups (PS3.3 C.7.6.16.2.3-2.4, C.7.6.16.2.1) of one Enhanced CT
instance. Slices are ordered by their position along the normal ``n = row x column`` (PS3.3
C.7.6.2.1.1), never by Instance Number. A series that is not one regular stack (tilt, gaps,
duplicates, mixed geometry) raises :class:`VolumeError` rather than giving a distorted volume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from . import header as h
from .pixels import PixelDataError, check_pixel_data, hounsfield
from .references import PreparedVolume, SeriesKind, VolumeRef
from .series import classify

LOGGER = logging.getLogger(__name__)

#: Fewest slices that make a volume.
MIN_SLICES = 2
#: Largest difference between direction cosines still counted as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Largest in-plane (off-normal) displacement between consecutive slices, in mm.
TILT_TOLERANCE_MM = 0.01
#: Positions closer than this along the normal are the same slice, in mm.
DUPLICATE_TOLERANCE_MM = 1e-3
#: A spacing larger than this times the median spacing is a gap (missing slices).
GAP_FACTOR = 1.5
#: Largest deviation of a spacing from the median: max(absolute mm, relative x median).
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_REL = 0.05
#: Largest relative difference between Pixel Spacing values still counted as equal.
PIXEL_SPACING_TOLERANCE = 1e-4


class VolumeError(ValueError):
    """A series that cannot be made into one regular volume; the message names the problem."""


@dataclass(frozen=True)
class _Slice:
    """Geometry of one slice: a single-frame instance, or one frame of a multi-frame instance."""

    label: str  # for messages: SOP Instance UID, or "frame N of <uid>"
    sop_instance_uid: str
    frame: int | None  # 1-based frame number for multi-frame instances
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int


def _normal(orientation: np.ndarray, label: str) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise VolumeError(
            f"ImageOrientationPatient {tuple(orientation.tolist())} of {label} is not two orthogonal unit vectors"
        )
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


def _check_tilt_attribute(ds: Dataset, label: str, value: float | None = None) -> None:
    tilt = value if value is not None else (h.floats(ds, "GantryDetectorTilt", 1) or (0.0,))[0]
    if abs(tilt) > 1e-3:
        raise VolumeError(f"gantry tilt: GantryDetectorTilt is {tilt} degrees in {label}; only 0 is supported")


def _slices_single_frame(datasets: Sequence[Dataset]) -> list[_Slice]:
    out: list[_Slice] = []
    for ds in datasets:
        uid = h.sop_instance_uid(ds)
        label = f"instance {uid or '(no SOP Instance UID)'}"
        if h.number_of_frames(ds) > 1:
            raise VolumeError(
                f"{label} has {h.number_of_frames(ds)} frames; a series of several instances must be single-frame"
            )
        position = h.floats(ds, "ImagePositionPatient", 3)
        orientation = h.floats(ds, "ImageOrientationPatient", 6)
        spacing = h.floats(ds, "PixelSpacing", 2)
        for keyword, val in (("ImagePositionPatient", position), ("ImageOrientationPatient", orientation),
                             ("PixelSpacing", spacing)):
            if val is None:
                raise VolumeError(f"{label}: {keyword} is missing or malformed; it is required to build a volume")
        _check_tilt_attribute(ds, label)
        out.append(_Slice(label, uid, None, np.asarray(position), np.asarray(orientation),
                          (spacing[0], spacing[1]), h.integer(ds, "Rows") or 0, h.integer(ds, "Columns") or 0))
    return out


def _slices_multi_frame(ds: Dataset) -> list[_Slice]:
    uid = h.sop_instance_uid(ds)
    out: list[_Slice] = []
    _check_tilt_attribute(ds, f"instance {uid}")
    for index in range(h.number_of_frames(ds)):
        label = f"frame {index + 1} of instance {uid}"
        pos_item = h.functional_group_item(ds, index, "PlanePositionSequence")
        ori_item = h.functional_group_item(ds, index, "PlaneOrientationSequence")
        pix_item = h.functional_group_item(ds, index, "PixelMeasuresSequence")
        position = h.floats(pos_item, "ImagePositionPatient", 3) if pos_item is not None else None
        orientation = h.floats(ori_item, "ImageOrientationPatient", 6) if ori_item is not None else None
        spacing = h.floats(pix_item, "PixelSpacing", 2) if pix_item is not None else None
        for keyword, val in (("ImagePositionPatient (PlanePositionSequence)", position),
                             ("ImageOrientationPatient (PlaneOrientationSequence)", orientation),
                             ("PixelSpacing (PixelMeasuresSequence)", spacing)):
            if val is None:
                raise VolumeError(f"{label}: {keyword} is missing or malformed; it is required to build a volume")
        acq = h.functional_group_item(ds, index, "CTAcquisitionDetailsSequence")
        if acq is not None:
            _check_tilt_attribute(acq, label)
        out.append(_Slice(label, uid, index + 1, np.asarray(position), np.asarray(orientation),
                          (spacing[0], spacing[1]), h.integer(ds, "Rows") or 0, h.integer(ds, "Columns") or 0))
    return out


def _same_text(datasets: Sequence[Dataset], keyword: str) -> str:
    values = {h.text(ds, keyword) for ds in datasets}
    if len(values) > 1:
        shown = ", ".join(sorted(v or "(missing)" for v in values))
        raise VolumeError(f"different {keyword} values in one series: {shown}")
    return values.pop() if values else ""


def _check_geometry(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray, float]:
    """Check one regular stack; return slices sorted along the normal, the normal and the spacing."""
    if len(slices) < MIN_SLICES:
        raise VolumeError(f"fewer than {MIN_SLICES} slices: {len(slices)} slice(s) cannot make a volume")
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise VolumeError(
                f"differing Rows/Columns: {first.label} is {first.rows}x{first.cols}, {s.label} is {s.rows}x{s.cols}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=PIXEL_SPACING_TOLERANCE, atol=1e-6):
            raise VolumeError(
                f"differing PixelSpacing: {first.label} has {first.pixel_spacing}, {s.label} has {s.pixel_spacing}"
            )
        if np.max(np.abs(s.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                f"mixed orientations: ImageOrientationPatient {tuple(first.orientation.tolist())} in "
                f"{first.label} but {tuple(s.orientation.tolist())} in {s.label}"
            )
    normal = _normal(first.orientation, first.label)
    ordered = sorted(slices, key=lambda s: float(normal @ s.position))
    along = np.array([normal @ s.position for s in ordered])
    steps = np.diff(along)
    for k, step in enumerate(steps):
        if step < DUPLICATE_TOLERANCE_MM:
            raise VolumeError(
                f"duplicate slice: {ordered[k].label} and {ordered[k + 1].label} are at the same position "
                f"{along[k]:.3f} mm along the slice normal"
            )
    for k in range(len(ordered) - 1):
        d = ordered[k + 1].position - ordered[k].position
        off_normal = float(np.linalg.norm(d - (d @ normal) * normal))
        if off_normal > TILT_TOLERANCE_MM:
            raise VolumeError(
                f"gantry tilt or sheared stack: consecutive slices {ordered[k].label} and {ordered[k + 1].label} "
                f"are displaced {off_normal:.3f} mm off the slice normal (allowed {TILT_TOLERANCE_MM} mm)"
            )
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        if step > GAP_FACTOR * median:
            raise VolumeError(
                f"missing slice(s): a gap of {step:.3f} mm between {ordered[k].label} and {ordered[k + 1].label}, "
                f"more than {GAP_FACTOR} x the median spacing {median:.3f} mm"
            )
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * median)
    worst = float(np.max(np.abs(steps - median)))
    if worst > tolerance:
        raise VolumeError(
            f"non-uniform slice spacing: spacings from {steps.min():.3f} to {steps.max():.3f} mm around a median "
            f"of {median:.3f} mm (allowed deviation {tolerance:.3f} mm)"
        )
    return ordered, normal, median


def _kind_of(datasets: Sequence[Dataset]) -> SeriesKind:
    kinds = {classify(ds)[0] for ds in datasets}
    return SeriesKind.ABDOMINAL_CT if SeriesKind.ABDOMINAL_CT in kinds else SeriesKind.CT


def _hu_or_volume_error(fn: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return fn()
    except PixelDataError as exc:
        raise VolumeError(f"pixel data: {exc}") from exc


def build_volume(datasets: Sequence[Dataset], kind: SeriesKind | None = None) -> PreparedVolume:
    """Make one CT series into a Hounsfield-unit volume sorted along the slice normal.

    Parameters
    ----------
    datasets : sequence of Dataset
        Either the single-frame CT Image instances of one series (any order), or exactly one
        multi-frame Enhanced / Legacy Converted Enhanced CT instance.
    kind : SeriesKind, optional
        ABDOMINAL_CT or CT; by default ABDOMINAL_CT when any instance classifies as abdominal
        (:func:`.series.classify`), else CT.

    Returns
    -------
    PreparedVolume
        ``hu`` is ``float32 [slices, rows, cols]`` in ascending position along the normal
        ``row x column`` (PS3.3 C.7.6.2.1.1); ``ref`` lists SOP Instance UIDs (and, for an enhanced
        instance, frame numbers) in the same order, the positions, orientation, pixel spacing and
        the median slice spacing.

    Raises
    ------
    VolumeError
        Fewer than :data:`MIN_SLICES` slices; missing ImagePositionPatient, ImageOrientationPatient
        or PixelSpacing; mixed orientations (> :data:`ORIENTATION_TOLERANCE`); gantry tilt
        (GantryDetectorTilt != 0, or consecutive positions displaced off the normal by more than
        :data:`TILT_TOLERANCE_MM`); duplicate slices; missing slices (a spacing over
        :data:`GAP_FACTOR` x the median) or otherwise non-uniform spacing; differing Rows/Columns or
        PixelSpacing; differing SeriesInstanceUID, StudyInstanceUID or FrameOfReferenceUID;
        undecodable pixel data.
    """
    datasets = list(datasets)
    if not datasets:
        raise VolumeError(f"fewer than {MIN_SLICES} slices: no instances given")
    series_uid = _same_text(datasets, "SeriesInstanceUID")
    study_uid = _same_text(datasets, "StudyInstanceUID")
    for_uid = _same_text(datasets, "FrameOfReferenceUID")
    if not for_uid:
        LOGGER.warning("CT series %s has no FrameOfReferenceUID", series_uid or "(no Series Instance UID)")
    sop_class = h.sop_class_uid(datasets[0])

    multi_frame = len(datasets) == 1 and h.number_of_frames(datasets[0]) > 1
    if multi_frame:
        # NumberOfFrames is checked against the Pixel Data sent before one slice per frame is made.
        try:
            check_pixel_data(datasets[0])
        except PixelDataError as exc:
            raise VolumeError(f"pixel data: {exc}") from exc
    slices = _slices_multi_frame(datasets[0]) if multi_frame else _slices_single_frame(datasets)
    ordered, _, spacing = _check_geometry(slices)

    if multi_frame:
        hu_all = _hu_or_volume_error(lambda: hounsfield(datasets[0]))
        hu = np.ascontiguousarray(hu_all[[s.frame - 1 for s in ordered]])
    else:
        index_of = {id(s): i for i, s in enumerate(slices)}
        planes = []
        for s in ordered:
            ds = datasets[index_of[id(s)]]
            planes.append(_hu_or_volume_error(lambda ds=ds: hounsfield(ds))[0])
        hu = np.stack(planes, axis=0)
    first = ordered[0]
    if hu.shape[1:] != (first.rows, first.cols):
        raise VolumeError(f"decoded slices are {hu.shape[1:]}, but Rows/Columns say {(first.rows, first.cols)}")

    ref = VolumeRef(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_class_uid=sop_class,
        sop_instance_uids=tuple(s.sop_instance_uid for s in ordered),
        frame_of_reference_uid=for_uid,
        image_orientation=tuple(float(v) for v in first.orientation),  # type: ignore[arg-type]
        image_positions=tuple(tuple(float(v) for v in s.position) for s in ordered),  # type: ignore[misc]
        pixel_spacing=first.pixel_spacing,
        slice_spacing=spacing,
        rows=first.rows,
        cols=first.cols,
        frames=tuple(int(s.frame) for s in ordered) if multi_frame else None,  # type: ignore[arg-type]
    )
    LOGGER.info("CT series %s: volume of %d slices %dx%d, spacing %.3f mm",
                series_uid or "(no Series Instance UID)", len(ordered), first.rows, first.cols, spacing)
    return PreparedVolume(ref=ref, hu=hu.astype(np.float32, copy=False), kind=kind or _kind_of(datasets))
