"""Pixels as a radiologist's viewer shows them, and Hounsfield units for CT.

The grey-scale pipeline is the one of PS3.4 N.2 (Grayscale transformations): stored values ->
Modality LUT / rescale (PS3.3 C.11.1) -> VOI LUT or window (PS3.3 C.11.2, C.8.11.3.1.5) ->
polarity (MONOCHROME1 inverted, PS3.3 C.7.6.3.1.2) -> 8-bit display values. Colour images are
returned as RGB: YBR_FULL / YBR_FULL_422 converted (PS3.3 C.7.6.3.1.2), PALETTE COLOR through its
Palette Color Lookup Table (PS3.3 C.7.9). Decoding and every LUT are pydicom's own
(:mod:`pydicom.pixels`); this module only chooses and chains them, frame by frame.

Before anything is decoded the Image Pixel module (PS3.3 C.7.6.3) is checked against size limits
and, for native transfer syntaxes, against the length of Pixel Data, so a hostile or broken header
cannot make the node allocate gigabytes.
"""

from __future__ import annotations

import copy
import logging
import math
import struct
from collections.abc import Iterator
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import UID

from . import header as h

LOGGER = logging.getLogger(__name__)

#: Largest frame accepted, in pixels (Rows x Columns).
MAX_FRAME_PIXELS = 100_000_000
#: Largest decoded instance accepted, in bytes (Rows x Columns x Samples x Frames x Bits Allocated / 8).
MAX_TOTAL_BYTES = 2 * 1024**3

_GREY = ("MONOCHROME1", "MONOCHROME2")
_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")
_RGB_LIKE = ("RGB", "YBR_ICT", "YBR_RCT")  # JPEG 2000 decoders return ICT/RCT data as RGB

# Modality LUT / VOI LUT attributes (PS3.3 C.11.1, C.11.2) and their functional group homes
# (PS3.3 C.7.6.16.2.9 Pixel Value Transformation, C.7.6.16.2.10 Frame VOI LUT).
_MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
_VOI_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")


class PixelDataError(ValueError):
    """Pixel Data that cannot (or must not) be decoded; the message names the SOP Instance UID."""


def _uid(ds: Dataset) -> str:
    return h.sop_instance_uid(ds) or "(no SOP Instance UID)"


def _required_positive(ds: Dataset, keyword: str, uid: str) -> int:
    val = h.integer(ds, keyword)
    if val is None or val <= 0:
        raise PixelDataError(
            f"instance {uid}: {keyword} is {h.text(ds, keyword) or 'missing'}; a positive integer is required"
        )
    return val


def check_pixel_data(ds: Dataset) -> None:
    """Check the Image Pixel module before decoding (PS3.3 C.7.6.3, PS3.5 8.1.1 / A.4).

    Raises
    ------
    PixelDataError
        Pixel Data missing; Rows/Columns/Bits Allocated/Samples per Pixel missing or not positive;
        a frame over :data:`MAX_FRAME_PIXELS`; a decoded size over :data:`MAX_TOTAL_BYTES`; no
        Transfer Syntax UID; native Pixel Data shorter than the header implies, or longer by a row
        or more; encapsulated Pixel Data that is not encapsulated, has malformed items, or has
        fewer fragments than frames (so NumberOfFrames can never exceed what was sent).
    """
    uid = _uid(ds)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise PixelDataError(f"instance {uid}: float Pixel Data is not supported, only (7FE0,0010) Pixel Data")
        raise PixelDataError(f"instance {uid}: no Pixel Data (7FE0,0010)")
    rows = _required_positive(ds, "Rows", uid)
    cols = _required_positive(ds, "Columns", uid)
    bits = _required_positive(ds, "BitsAllocated", uid)
    samples = h.integer(ds, "SamplesPerPixel") or 1
    if samples not in (1, 3):
        raise PixelDataError(f"instance {uid}: SamplesPerPixel {samples} is not supported; allowed: 1 or 3")
    frames = 1
    if h.value(ds, "NumberOfFrames") is not None:
        frames = _required_positive(ds, "NumberOfFrames", uid)
    if bits not in (1, 8, 16, 32, 64):
        raise PixelDataError(f"instance {uid}: BitsAllocated {bits} is not allowed; allowed: 1, 8, 16, 32, 64")
    if rows * cols > MAX_FRAME_PIXELS:
        raise PixelDataError(
            f"instance {uid}: Rows x Columns = {rows} x {cols} = {rows * cols} pixels per frame is over "
            f"the limit of {MAX_FRAME_PIXELS}"
        )
    decoded = math.ceil(rows * cols * samples * frames * bits / 8)
    if decoded > MAX_TOTAL_BYTES:
        raise PixelDataError(
            f"instance {uid}: Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated = "
            f"{rows} x {cols} x {samples} x {frames} x {bits} bits = {decoded} bytes decoded, over the "
            f"limit of {MAX_TOTAL_BYTES} bytes"
        )
    ts = h.transfer_syntax_uid(ds)
    if not ts:
        raise PixelDataError(f"instance {uid}: no Transfer Syntax UID (0002,0010) in the file meta information")
    try:
        data = ds["PixelData"].value
    except Exception as exc:  # noqa: BLE001
        raise PixelDataError(f"instance {uid}: Pixel Data cannot be read: {exc}") from exc
    if data is None:
        raise PixelDataError(f"instance {uid}: Pixel Data is empty")
    length = len(data)
    if not UID(ts).is_transfer_syntax:
        raise PixelDataError(
            f"instance {uid}: Transfer Syntax UID {ts} is not a known transfer syntax (PS3.6 Annex A)"
        )
    if UID(ts).is_encapsulated:
        if length < 8 or bytes(data[:4]) != b"\xfe\xff\x00\xe0":
            raise PixelDataError(
                f"instance {uid}: transfer syntax {UID(ts).name} needs encapsulated Pixel Data "
                f"(PS3.5 A.4) but the {length} bytes do not start with an item"
            )
        fragments = _fragment_count(data, uid)
        if frames > fragments:
            raise PixelDataError(
                f"instance {uid}: NumberOfFrames is {frames} but the encapsulated Pixel Data holds "
                f"{fragments} fragment(s); every frame needs at least one (PS3.5 A.4)"
            )
        return
    expected = decoded
    if h.upper(ds, "PhotometricInterpretation") == "YBR_FULL_422" and samples == 3:
        expected = expected // 3 * 2  # native YBR_FULL_422 keeps 2 samples per pixel (PS3.3 C.7.6.3.1.2)
    if length < expected:
        raise PixelDataError(
            f"instance {uid}: Pixel Data is {length} bytes, fewer than the {expected} bytes that "
            f"Rows {rows} x Columns {cols} x SamplesPerPixel {samples} x NumberOfFrames {frames} x "
            f"BitsAllocated {bits} need"
        )
    # A pad byte to even length is allowed (PS3.5 7.1.1); a row or more beyond what the header
    # describes means Rows, Columns or NumberOfFrames is wrong, and the image would be misread.
    # (Some writers store YBR_FULL_422 at full size; pydicom reads that, so it is allowed.)
    if length - decoded >= max(math.ceil(cols * samples * bits / 8), 2):
        raise PixelDataError(
            f"instance {uid}: Pixel Data is {length} bytes, more than the {decoded} bytes that "
            f"Rows {rows} x Columns {cols} x SamplesPerPixel {samples} x NumberOfFrames {frames} x "
            f"BitsAllocated {bits} describe: the header does not match the pixel data"
        )


def _fragment_count(data: bytes, uid: str) -> int:
    """Fragments after the Basic Offset Table item of encapsulated Pixel Data (PS3.5 A.4)."""
    try:
        (table_length,) = struct.unpack("<L", bytes(data[4:8]))
        buffer = BytesIO(data)
        buffer.seek(8 + table_length)
        return parse_fragments(buffer)[0]
    except (ValueError, struct.error) as exc:
        raise PixelDataError(f"instance {uid}: encapsulated Pixel Data items are malformed: {exc}") from exc


def _decoded(ds: Dataset) -> Iterator[tuple[np.ndarray, str]]:
    """Yield (frame array, photometric interpretation of that array) for every frame."""
    check_pixel_data(ds)
    uid = _uid(ds)
    ts = UID(h.transfer_syntax_uid(ds))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise PixelDataError(f"instance {uid}: transfer syntax {ts.name} ({ts}) is not supported") from exc
    try:
        opts = as_pixel_options(ds)
        # as_rgb: YBR_FULL(_422) becomes RGB; the meta says which space the array is now in, so a
        # decoder (e.g. JPEG 2000 with its MCT) that already delivered RGB is never converted twice.
        for arr, meta in decoder.iter_array(ds, raw=False, as_rgb=True, validate=True, **opts):
            pi = str(meta.get("photometric_interpretation", h.upper(ds, "PhotometricInterpretation")))
            yield arr, pi.upper()
    except PixelDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad pixel data
        raise PixelDataError(f"instance {uid}: cannot decode Pixel Data ({ts.name}): {exc}") from exc


def _lut_dataset(ds: Dataset, frame_index: int) -> Dataset:
    """A small data set with the Modality/VOI LUT attributes that apply to one frame.

    Top-level attributes win; for multi-frame enhanced instances the Pixel Value Transformation and
    Frame VOI LUT functional groups (per-frame, else shared) supply them (PS3.3 C.7.6.16).
    """
    view = Dataset()
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta  # endianness of OW LUT Data
    for keyword in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "BitsAllocated"):
        if h.value(ds, keyword) is not None:
            view[keyword] = copy.copy(ds[keyword])  # never mutate the caller's elements
    if h.value(view, "BitsStored") is None and h.value(ds, "BitsAllocated") is not None:
        view.BitsStored = int(ds.BitsAllocated)
    if h.value(view, "PixelRepresentation") is None:
        view.PixelRepresentation = 0
    for group, keywords in (("PixelValueTransformationSequence", _MODALITY_KEYWORDS),
                            ("FrameVOILUTSequence", _VOI_KEYWORDS)):
        source = ds
        if all(h.value(ds, k) is None for k in keywords):
            item = h.functional_group_item(ds, frame_index, group)
            if item is not None:
                source = item
        for keyword in keywords:
            if h.value(source, keyword) is not None:
                view[keyword] = copy.copy(source[keyword])
    return view


def _has_modality_lut(view: Dataset) -> bool:
    return bool(h.items(view, "ModalityLUTSequence")) or (
        h.value(view, "RescaleSlope") is not None and h.value(view, "RescaleIntercept") is not None
    )


def _to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 255], clipping outside."""
    out = np.asarray(arr, dtype=np.float64)
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.uint8)
    out = (out - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voi_lut_display(values: np.ndarray, view: Dataset) -> np.ndarray | None:
    """First VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), or None if there is none."""
    voi_items = h.items(view, "VOILUTSequence")
    if not voi_items or any(h.value(voi_items[0], k) is None for k in ("LUTDescriptor", "LUTData")):
        return None
    if not np.issubdtype(values.dtype, np.integer):
        values = np.rint(values).astype(np.int64)  # a VOI LUT is indexed by integer input values
    out = apply_voi(values, view, 0)
    nominal_bits = int(voi_items[0].LUTDescriptor[2])
    hi = max(float(2**nominal_bits - 1), float(np.max(out)) if out.size else 0.0)
    return _to_uint8(out, 0.0, hi)


def _window_display(values: np.ndarray, view: Dataset) -> np.ndarray | None:
    """First Window Center/Width (PS3.3 C.11.2.1.2), or None if there is none."""
    if h.value(view, "WindowCenter") is None or h.value(view, "WindowWidth") is None:
        return None
    out = apply_windowing(values, view, 0)
    # The window's output range [y_min, y_max]: what pydicom maps values far below / above it to.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        bounds = apply_windowing(np.array([-1e300, 1e300]), view, 0)
    return _to_uint8(out, float(bounds[0]), float(bounds[1]))


def _grey_display(arr: np.ndarray, view: Dataset, pi: str) -> np.ndarray:
    """Modality LUT, then VOI LUT or window (first of each), else min-max; MONOCHROME1 inverted.

    A VOI LUT or window that pydicom rejects (e.g. Window Width < 1 with LINEAR, an unsupported
    LUT entry size) is logged and skipped, as a viewer would, rather than failing the image.
    """
    values = apply_modality_lut(arr, view)
    display = None
    for step in (_voi_lut_display, _window_display):
        try:
            display = step(values, view)
        except (ValueError, NotImplementedError, IndexError, TypeError) as exc:
            LOGGER.warning("ignoring an unusable VOI transformation (%s): %s", step.__name__, exc)
            display = None
        if display is not None:
            break
    if display is None:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        display = _to_uint8(values, lo, hi)
    if pi == "MONOCHROME1":
        display = 255 - display
    return display


def _colour_display(arr: np.ndarray, ds: Dataset, pi: str, uid: str) -> np.ndarray:
    """RGB as uint8: YBR_FULL(_422) converted if the decoder left it so; high bit depths scaled."""
    if pi in _YBR_FULL:
        arr = convert_color_space(arr, pi, "RGB")
    elif pi not in _RGB_LIKE:
        raise PixelDataError(
            f"instance {uid}: PhotometricInterpretation {pi} with 3 samples is not supported; "
            "allowed: RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT"
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = h.integer(ds, "BitsStored") or arr.dtype.itemsize * 8
    return _to_uint8(arr, 0.0, float(2**bits - 1))


def _palette_display(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)[..., :3]  # drop alpha if the palette has one
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    return _to_uint8(rgb, 0.0, float(np.iinfo(rgb.dtype).max))


def display_frames(ds: Dataset) -> list[np.ndarray]:
    """Decode every frame to what a viewer displays.

    Parameters
    ----------
    ds : Dataset
        An image instance with Pixel Data and a Transfer Syntax UID in its file meta information.
        Any transfer syntax pydicom can decode with the installed plugins (native, deflate, RLE,
        JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000).

    Returns
    -------
    list of numpy.ndarray
        One ``uint8`` array per frame: ``[rows, cols]`` for MONOCHROME1/2 (MONOCHROME1 inverted so
        that bright means dense, as displayed), ``[rows, cols, 3]`` RGB for colour.

    Raises
    ------
    PixelDataError
        The pixel data cannot be decoded or fails :func:`check_pixel_data`.
    """
    uid = _uid(ds)
    frames: list[np.ndarray] = []
    for index, (arr, pi) in enumerate(_decoded(ds)):
        try:
            if pi in _GREY:
                view = _lut_dataset(ds, index)
                view.PhotometricInterpretation = pi
                frame = _grey_display(arr, view, pi)
            elif pi == "PALETTE COLOR":
                frame = _palette_display(arr, ds)
            elif arr.ndim == 3 and arr.shape[-1] == 3:
                frame = _colour_display(arr, ds, pi, uid)
            else:
                raise PixelDataError(
                    f"instance {uid}: PhotometricInterpretation {pi or '(none)'} is not supported; allowed: "
                    "MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422"
                )
        except PixelDataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken LUT is bad pixel data
            raise PixelDataError(f"instance {uid}: frame {index + 1} cannot be displayed: {exc}") from exc
        frames.append(frame)
    return frames


def hounsfield(ds: Dataset) -> np.ndarray:
    """Hounsfield units of a CT instance through its Modality LUT (PS3.3 C.11.1, C.8.2.1).

    Parameters
    ----------
    ds : Dataset
        A CT Image or (Legacy Converted) Enhanced CT instance. For enhanced instances the rescale
        comes from the Pixel Value Transformation functional group of each frame.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``[frames, rows, cols]`` (``frames`` is 1 for a single-frame instance).

    Raises
    ------
    PixelDataError
        The pixel data cannot be decoded, is not single-sample grey, or no Rescale Slope/Intercept
        or Modality LUT is present to give Hounsfield units.
    """
    uid = _uid(ds)
    out: list[np.ndarray] = []
    for index, (arr, pi) in enumerate(_decoded(ds)):
        if arr.ndim != 2 or pi not in _GREY:
            raise PixelDataError(
                f"instance {uid}: CT pixel data must be MONOCHROME1/2 with 1 sample per pixel, "
                f"got PhotometricInterpretation {pi or '(none)'} and shape {arr.shape}"
            )
        view = _lut_dataset(ds, index)
        if not _has_modality_lut(view):
            raise PixelDataError(
                f"instance {uid}: frame {index + 1} has no Rescale Slope/Intercept or Modality LUT "
                "Sequence, so Hounsfield units are unknown"
            )
        try:
            out.append(np.asarray(apply_modality_lut(arr, view), dtype=np.float32))
        except Exception as exc:  # noqa: BLE001
            raise PixelDataError(f"instance {uid}: frame {index + 1}: modality LUT failed: {exc}") from exc
    return np.stack(out, axis=0)
