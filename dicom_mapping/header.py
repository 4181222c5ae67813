"""Tolerant header access: read attributes without ever raising on a malformed dataset.

Headers arriving from a PACS are often incomplete or slightly off the standard (empty
Type 1 attributes, wrong VRs, anonymisers blanking UIDs). The helpers here return ``None``
or an empty value instead of raising, so recognition code (:mod:`.series`) can treat a
missing attribute as missing. UIDs fall back to the File Meta Information (PS3.10 7.1)
where the data set's own value is empty.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

LOGGER = logging.getLogger(__name__)

_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")


def value(ds: Dataset, keyword: str) -> Any:
    """Return the value of ``keyword`` in ``ds``, or None when absent, empty or unreadable."""
    try:
        if keyword not in ds:
            return None
        val = ds[keyword].value
    except Exception:  # noqa: BLE001 - a broken element is a missing element
        LOGGER.debug("unreadable attribute %s", keyword, exc_info=True)
        return None
    if val is None:
        return None
    if isinstance(val, (str, bytes)) and len(val) == 0:
        return None
    try:
        if hasattr(val, "__len__") and not isinstance(val, (str, bytes)) and len(val) == 0:
            return None
    except Exception:  # noqa: BLE001
        return None
    return val


def text(ds: Dataset, keyword: str) -> str:
    """Return a string attribute stripped (multi-valued ones joined by ``\\``), ``""`` if missing."""
    val = value(ds, keyword)
    if val is None:
        return ""
    try:
        if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue":
            return "\\".join(str(v).strip() for v in val)
        return str(val).strip()
    except Exception:  # noqa: BLE001
        return ""


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (0020,0020) as (row direction, column direction), None unless both are given."""
    val = value(ds, "PatientOrientation")
    if val is not None and not isinstance(val, (str, bytes)) and len(val) == 2 and all(val):
        return str(val[0]), str(val[1])
    return None


def upper(ds: Dataset, keyword: str) -> str:
    """:func:`text` in upper case (Code Strings, PS3.5 6.2, are upper case by definition)."""
    return text(ds, keyword).upper()


def floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """Return exactly ``count`` finite floats from a DS/FD attribute, or None."""
    val = value(ds, keyword)
    if val is None:
        return None
    try:
        seq = list(val) if (hasattr(val, "__iter__") and not isinstance(val, (str, bytes))) else [val]
        out = tuple(float(v) for v in seq)
    except Exception:  # noqa: BLE001
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def integer(ds: Dataset, keyword: str) -> int | None:
    """Return an integer attribute (IS, US, ...) or None when missing or not a number."""
    val = value(ds, keyword)
    if val is None:
        return None
    try:
        if hasattr(val, "__iter__") and not isinstance(val, (str, bytes)):
            val = list(val)[0]
        return int(float(val))
    except Exception:  # noqa: BLE001
        return None


def _meta(ds: Dataset, keyword: str) -> str:
    try:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return ""
        return text(meta, keyword)
    except Exception:  # noqa: BLE001
        return ""


def truncation(ds: Dataset) -> str | None:
    """The first top-level element whose value is shorter than its declared length, or None.

    pydicom reads a file or stream that was cut short without complaint: the last element
    simply holds fewer bytes than its Value Length says (PS3.5 7.1.1). Only elements still
    in their raw, as-read form are checked, so call this straight after reading.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF:
            continue  # converted already, or undefined length (sequences, encapsulated Pixel Data)
        if not isinstance(raw.value, (bytes, bytearray)):
            continue  # deferred or buffered: not read into memory
        if len(raw.value) < raw.length:
            return (f"element ({tag.group:04X},{tag.element:04X}) declares {raw.length} bytes but only "
                    f"{len(raw.value)} follow: the data set is truncated or its value length is wrong")
    return None


def sop_class_uid(ds: Dataset) -> str:
    """SOP Class UID (0008,0016), else Media Storage SOP Class UID (0002,0002), else ``""``."""
    return text(ds, "SOPClassUID") or _meta(ds, "MediaStorageSOPClassUID")


def sop_instance_uid(ds: Dataset) -> str:
    """SOP Instance UID (0008,0018), else Media Storage SOP Instance UID (0002,0003), else ``""``."""
    return text(ds, "SOPInstanceUID") or _meta(ds, "MediaStorageSOPInstanceUID")


def transfer_syntax_uid(ds: Dataset) -> str:
    """Transfer Syntax UID (0002,0010) from the File Meta Information, ``""`` if unknown."""
    return _meta(ds, "TransferSyntaxUID")


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008); 1 when absent, empty or not a positive number."""
    n = integer(ds, "NumberOfFrames")
    return n if n is not None and n > 0 else 1


def items(ds: Dataset, keyword: str) -> list[Dataset]:
    """Items of a sequence attribute, ``[]`` when absent or unreadable."""
    val = value(ds, keyword)
    if val is None:
        return []
    try:
        return [item for item in val if isinstance(item, Dataset)]
    except Exception:  # noqa: BLE001
        return []


def codes(ds: Dataset, keyword: str) -> Iterator[tuple[str, str, str]]:
    """Yield (code value, scheme designator, upper-case meaning) of a code sequence's items.

    Code Sequence Macro, PS3.3 8.8 (Long/URN Code Value included).
    """
    for item in items(ds, keyword):
        code = text(item, "CodeValue") or text(item, "LongCodeValue") or text(item, "URNCodeValue")
        yield code, upper(item, "CodingSchemeDesignator"), upper(item, "CodeMeaning")


def tokens(*texts: str) -> list[str]:
    """Lower-case alphanumeric tokens of free text ("CHEST_PA 2-view" -> chest, pa, 2, view)."""
    out: list[str] = []
    for t in texts:
        out.extend(tok for tok in _TOKEN_SPLIT.split(t.lower()) if tok)
    return out


def functional_group_item(ds: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """Item of ``sequence`` for a frame: per-frame group first, else shared (PS3.3 C.7.6.16).

    Parameters
    ----------
    ds : Dataset
        A multi-frame instance with Per-Frame / Shared Functional Groups Sequences.
    frame_index : int
        0-based frame index.
    sequence : str
        Keyword of the functional group macro's sequence, e.g. ``"PlanePositionSequence"``.
    """
    per_frame = items(ds, "PerFrameFunctionalGroupsSequence")
    if 0 <= frame_index < len(per_frame):
        found = items(per_frame[frame_index], sequence)
        if found:
            return found[0]
    shared = items(ds, "SharedFunctionalGroupsSequence")
    if shared:
        found = items(shared[0], sequence)
        if found:
            return found[0]
    return None
