"""One study -> model inputs: prepared chest radiographs, skin images and CT volumes.

Every instance is classified (:mod:`.series`); 2D images become one :class:`PreparedImage` per
frame with the display pixels (:mod:`.pixels`) and an :class:`ImageRef` carrying the identity and
geometry the result builders need (PS3.3 C.7.6.1 General Image, C.7.6.2 Image Plane, C.8.11.4 DX
Detector); CT instances are grouped by Series Instance UID into volumes (:mod:`.volume`). What
cannot be used is recorded as :class:`Skipped` and logged with its SOP Instance UID only, never
with patient identifiers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from pydicom.dataset import Dataset

from . import header as h
from .header_context import clinical_context, projection
from .orientation import AS_STORED
from .pixels import display_frames
from .references import ImageRef, PreparedImage, PreparedVolume, SeriesKind, Skipped, StudyInputs, View
from .series import Classification, classify
from .volume import build_volume

LOGGER = logging.getLogger(__name__)

_IMAGE_KINDS = (SeriesKind.CHEST_RADIOGRAPH, SeriesKind.DERMOSCOPY)
_CT_KINDS = (SeriesKind.CT, SeriesKind.ABDOMINAL_CT)


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing, else ImagerPixelSpacing, else None.

    Pixel Spacing (0028,0030, PS3.3 C.7.6.2.1.1 / C.8.11.4), then Imager Pixel Spacing
    (0018,1164, PS3.3 C.8.11.4.1.1, at the detector), then the Pixel Measures functional group of a
    multi-frame instance. Zero, negative or malformed values count as absent.
    """
    candidates = [h.floats(ds, "PixelSpacing", 2), h.floats(ds, "ImagerPixelSpacing", 2)]
    item = h.functional_group_item(ds, 0, "PixelMeasuresSequence")
    if item is not None:
        candidates.append(h.floats(item, "PixelSpacing", 2))
    for spacing in candidates:
        if spacing is not None and spacing[0] > 0 and spacing[1] > 0:
            return spacing[0], spacing[1]
    return None


def _sort_number(ds: Dataset, keyword: str) -> float:
    val = h.integer(ds, keyword)
    return math.inf if val is None else float(val)


def _image_key(img: PreparedImage, order: dict[str, tuple[float, float]]) -> tuple:
    series_no, instance_no = order.get(img.ref.sop_instance_uid, (math.inf, math.inf))
    return (series_no, instance_no, img.ref.sop_instance_uid, img.ref.frame or 0)


def _skip(out: StudyInputs, sop_uid: str, series_uid: str, reason: str, reader_note: str | None = None) -> None:
    LOGGER.info("skipped %s: %s", sop_uid or f"series {series_uid or '(no Series Instance UID)'}", reason)
    out.skipped.append(Skipped(sop_instance_uid=sop_uid, series_instance_uid=series_uid, reason=reason,
                               reader_note=reader_note))


def _prepare_image(ds: Dataset, found: Classification) -> list[PreparedImage]:
    kind, view = found.kind, found.view
    frames = display_frames(ds)
    multi = len(frames) > 1
    spacing = pixel_spacing(ds)
    chest = kind is SeriesKind.CHEST_RADIOGRAPH
    orientation = found.orientation or AS_STORED
    prepared = []
    for index, pixels in enumerate(frames):
        ref = ImageRef(
            study_instance_uid=h.text(ds, "StudyInstanceUID"),
            series_instance_uid=h.text(ds, "SeriesInstanceUID"),
            sop_class_uid=h.sop_class_uid(ds),
            sop_instance_uid=h.sop_instance_uid(ds),
            rows=int(pixels.shape[0]),
            cols=int(pixels.shape[1]),
            frame=index + 1 if multi else None,
            pixel_spacing=spacing,
            frame_of_reference_uid=h.text(ds, "FrameOfReferenceUID") or None,
            modality=h.upper(ds, "Modality"),
        )
        prepared.append(PreparedImage(ref=ref, pixels=pixels, kind=kind, view=view,
                                      projection=projection(ds) if chest else None, orientation=orientation))
    return prepared


def prepare_study(datasets: Sequence[Dataset]) -> StudyInputs:
    """Classify and prepare every instance of one study.

    Parameters
    ----------
    datasets : sequence of Dataset
        All instances of one study (StudyInstanceUID, PS3.3 C.7.2.1), with pixel data.

    Returns
    -------
    StudyInputs
        ``images``: chest radiographs and skin images, one per frame, ordered by Series Number,
        Instance Number, SOP Instance UID, frame (missing numbers last). ``volumes``: one per CT
        series that builds, ordered by Series Number then Series Instance UID. ``skipped``: every
        unusable instance (or, for a CT series whose volume fails, one entry for the series with an
        empty ``sop_instance_uid`` and the :class:`.volume.VolumeError` text), in input order.

    Raises
    ------
    ValueError
        ``datasets`` is empty, or an instance's StudyInstanceUID differs from the first one's (one
        study per call).
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("prepare_study needs at least one dataset; got none")
    study_uid = h.text(datasets[0], "StudyInstanceUID")
    for ds in datasets[1:]:
        other = h.text(ds, "StudyInstanceUID")
        if other != study_uid:
            raise ValueError(
                f"StudyInstanceUID {other or '(missing)'} of instance {h.sop_instance_uid(ds)} differs from "
                f"{study_uid or '(missing)'} of the first instance; prepare_study takes one study per call"
            )
    first = datasets[0]
    out = StudyInputs(study_instance_uid=study_uid, clinical=clinical_context(first),
                      study_date=h.text(first, "StudyDate"), study_description=h.text(first, "StudyDescription"))
    order: dict[str, tuple[float, float]] = {}
    ct_series: dict[str, list[Dataset]] = {}
    ct_kinds: dict[str, set[SeriesKind]] = {}

    for ds in datasets:
        sop_uid = h.sop_instance_uid(ds)
        series_uid = h.text(ds, "SeriesInstanceUID")
        found = classify(ds)
        kind = found.kind
        if kind is None:
            _skip(out, sop_uid, series_uid, found.reason, found.reader_note)
            continue
        if kind in _CT_KINDS:
            ct_series.setdefault(series_uid, []).append(ds)
            ct_kinds.setdefault(series_uid, set()).add(kind)
            continue
        try:
            images = _prepare_image(ds, found)
        except ValueError as exc:  # PixelDataError and friends
            _skip(out, sop_uid, series_uid, f"{kind.value}: {exc}",
                  f"a {kind.value.replace('_', ' ')} image whose pixel data could not be read")
            continue
        order[sop_uid] = (_sort_number(ds, "SeriesNumber"), _sort_number(ds, "InstanceNumber"))
        out.images.extend(images)
        LOGGER.info("prepared %s as %s (%d frame(s)): %s", sop_uid, kind.value, len(images), found.reason)

    volumes: list[tuple[tuple[float, str], PreparedVolume]] = []
    for series_uid, members in ct_series.items():
        kind = SeriesKind.ABDOMINAL_CT if SeriesKind.ABDOMINAL_CT in ct_kinds[series_uid] else SeriesKind.CT
        try:
            volume = build_volume(members, kind=kind)
        except ValueError as exc:  # VolumeError, or anything a broken header makes of it
            _skip(out, "", series_uid, f"CT series of {len(members)} instance(s): {exc}",
                  f"an abdominal CT series of {len(members)} image(s) that could not be made into a volume"
                  if kind is SeriesKind.ABDOMINAL_CT else None)
            continue
        volumes.append(((min(_sort_number(ds, "SeriesNumber") for ds in members), series_uid), volume))

    out.images.sort(key=lambda img: _image_key(img, order))
    out.volumes = [v for _, v in sorted(volumes, key=lambda pair: pair[0])]
    return out


def order_chest_views(images: Sequence[PreparedImage]) -> list[PreparedImage]:
    """Frontal views first, then lateral, then images of unknown view; stable within each group."""
    rank = {View.FRONTAL: 0, View.LATERAL: 1}
    return sorted(images, key=lambda img: rank.get(img.view, 2) if img.view is not None else 2)


def _chest_images(study: StudyInputs) -> list[PreparedImage]:
    return order_chest_views([img for img in study.images if img.kind == SeriesKind.CHEST_RADIOGRAPH])


def longitudinal_images(current: StudyInputs, prior: StudyInputs) -> tuple[list[PreparedImage], int]:
    """Chest radiographs of the current study, then of the prior (frontal first within each).

    Returns
    -------
    tuple of (list of PreparedImage, int)
        The images and ``num_current``, the number of current images: the caller numbers them
        ``<img0>..<img{num_current-1}>`` and the prior's images the rest, grouped by study.

    Raises
    ------
    ValueError
        Either study has no chest radiograph.
    """
    cur = _chest_images(current)
    pri = _chest_images(prior)
    for name, study, imgs in (("current", current, cur), ("prior", prior, pri)):
        if not imgs:
            raise ValueError(
                f"the {name} study {study.study_instance_uid or '(no Study Instance UID)'} has no chest "
                "radiograph; longitudinal comparison needs one in both studies"
            )
    return cur + pri, len(cur)
