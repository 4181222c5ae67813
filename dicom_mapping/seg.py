"""Segmentation objects (PS3.3 A.51 Segmentation IOD) built with highdicom.

One binary SEG per segmented source: a 2D image (one frame per segment, on the
referenced frame) or a CT volume (one frame per source slice that the segment
covers), in the source's frame of reference. Each structure is one segment with
its SNOMED CT category and type (CID 7150/7151), AUTOMATIC algorithm type and
the algorithm's name and version.

A multi-frame 2D source without a frame of reference gets no SEG (highdicom
cannot reference one of its frames); the SR still measures the mask and the
overlays still draw it.

Empty masks: a structure the model segmented but whose mask is empty is
*omitted* from the SEG (a segment without frames is not useful to a viewer);
it is still reported in the SR as not found. When every mask is empty no SEG is
written (:func:`build_segmentation` returns ``None``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from .codes import segment_codes
from .identity import AlgorithmInfo, derive_uid
from .references import ImageRef, VolumeRef
from .result_header import ResultHeader

LOGGER = logging.getLogger(__name__)

SERIES_DESCRIPTION = "MedVersa segmentation (AI-generated, unverified)"


@dataclass(frozen=True)
class SegmentInfo:
    """Where one structure landed in a SEG, for the SR's references and measurements."""

    label: str
    segment_number: int
    frame_numbers: tuple[int, ...]


@dataclass
class SegmentationResult:
    dataset: hd.seg.Segmentation
    segments: list[SegmentInfo]


def _descriptions(labels: list[str], algorithm: AlgorithmInfo, key: str) -> list[hd.seg.SegmentDescription]:
    out = []
    for number, label in enumerate(labels, 1):
        c = segment_codes(label)
        out.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=c.category,
            segmented_property_type=c.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.seg_algorithm_id(),
            tracking_uid=derive_uid(algorithm.org_root, key, "segment", label),
            tracking_id=f"{label} ({algorithm.name})"[:64],
        ))
    return out


def _segments_of(seg: hd.seg.Segmentation, labels: list[str]) -> list[SegmentInfo]:
    frames: dict[int, list[int]] = {n: [] for n in range(1, len(labels) + 1)}
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        ident = item if "SegmentIdentificationSequence" in item else shared  # shared when one segment
        frames[int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)].append(i)
    return [SegmentInfo(label, n, tuple(frames[n])) for n, label in enumerate(labels, 1)]


def build_segmentation(
    sources: list[Dataset],
    masks: list[tuple[str, np.ndarray]],
    ref: ImageRef | VolumeRef,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9701,
    instance_number: int = 1,
) -> SegmentationResult | None:
    """A binary SEG of ``masks`` (label, bool array) on ``sources``.

    2D: ``sources`` is the one source instance; masks are [rows, cols] on frame
    ``ref.frame`` (or the single frame). 3D: ``sources`` are the slice instances
    in ``ref.sop_instance_uids`` order (or the one Enhanced CT instance); masks are
    [slices, rows, cols] in volume order.
    """
    kept = [(label, m.astype(bool)) for label, m in masks if m.any()]
    for label, m in masks:
        if not m.any():
            LOGGER.info("segment %r is empty: omitted from the SEG", label)
    if not kept:
        return None
    labels = [label for label, _ in kept]
    stack = np.stack([m for _, m in kept], axis=-1).astype(np.uint8)  # [..., segments]
    if isinstance(ref, VolumeRef):
        pixel_array = _volume_frames(stack, sources, ref)
    else:
        pixel_array = _image_frames(stack, sources[0], ref)
        if ref.frame and "FrameOfReferenceUID" not in sources[0]:
            # highdicom builds SEGs on multi-frame sources only within a frame of reference.
            LOGGER.warning("no SEG for frame %d of %s: a multi-frame source without a frame of reference "
                           "is not supported; the SR and overlays still report the masks", ref.frame,
                           ref.sop_instance_uid)
            return None
    header = ResultHeader(algorithm, series_instance_uid, series_number, sop_instance_uid, instance_number,
                          SERIES_DESCRIPTION)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(labels, algorithm, sop_instance_uid),
        omit_empty_frames=True,
        pixel_measures=_pixel_measures(ref) if isinstance(ref, VolumeRef) else None,
        **header.content("segmentation"),
        **header.kwargs(device_serial_number=True),
    )
    if "PatientOrientation" not in seg and "FrameOfReferenceUID" not in seg:
        # General Image, Type 2C without a frame of reference: copy it, or leave it empty.
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    if isinstance(ref, ImageRef):
        _image_pixel_measures(seg, ref)
    return SegmentationResult(header.finish(seg), _segments_of(seg, labels))


def _image_pixel_measures(seg: Dataset, ref: ImageRef) -> None:
    """A SEG on a 2D image carries no Pixel Measures and no plane geometry.

    A projection image has no Frame of Reference, so the SEG has none either: Plane Position and
    Plane Orientation (Patient) are defined only in a patient coordinate system and must not be
    invented, and Pixel Measures is optional (PS3.3 A.51-2). The frames align pixel for pixel with
    the source, whose own spacing applies. highdicom writes 2D Pixel Measures without Slice
    Thickness, which its reader rejects (as it would a zero spacing from an uncalibrated source), so
    none is written. OHIF 3.13 cannot show such a SEG (it requires both); the SR's outlines carry
    the masks there (docs/conformance-statement.md, viewers).
    """
    del ref
    for item in seg.get("SharedFunctionalGroupsSequence", []):
        if "PixelMeasuresSequence" in item:
            del item.PixelMeasuresSequence


def _pixel_measures(ref: ImageRef | VolumeRef) -> hd.PixelMeasuresSequence | None:
    spacing = ref.pixel_spacing
    if spacing is None or min(spacing) <= 0:
        return None
    thickness = ref.slice_spacing if isinstance(ref, VolumeRef) else None
    return hd.PixelMeasuresSequence(pixel_spacing=tuple(float(v) for v in spacing), slice_thickness=thickness)


def _image_frames(stack: np.ndarray, source: Dataset, ref: ImageRef) -> np.ndarray:
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    if frames == 1:
        return stack[None]
    full = np.zeros((frames, *stack.shape), dtype=np.uint8)
    full[(ref.frame or 1) - 1] = stack
    return full


def _volume_frames(stack: np.ndarray, sources: list[Dataset], ref: VolumeRef) -> np.ndarray:
    if len(sources) == 1 and ref.frames:
        # Enhanced CT: one multi-frame source; put each volume slice on its frame.
        frames = int(sources[0].NumberOfFrames)
        full = np.zeros((frames, *stack.shape[1:]), dtype=np.uint8)
        for k, frame in enumerate(ref.frames):
            full[frame - 1] = stack[k]
        return full
    by_uid = {str(ds.SOPInstanceUID): i for i, ds in enumerate(sources)}
    if [by_uid.get(uid) for uid in ref.sop_instance_uids] != list(range(len(sources))):
        raise ValueError("sources must be the volume's slice instances in volume order")
    return stack
