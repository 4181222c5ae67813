"""Storage SCU: C-STORE of data sets or files over one association (PS3.4 Annex B, PS3.7 9.1.1).

Presentation contexts cover exactly the SOP classes and transfer syntaxes present, within
the 128 an association can hold (PS3.8 9.3.2.2); an instance whose transfer syntax the peer
does not accept is sent over an accepted uncompressed one, decompressed first where needed.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from medversa.node.dicom_classes import UNCOMPRESSED
from medversa.node.settings import Peer, PeerTLS

from .association import MAX_CONTEXTS, request_association
from .diagnosis import all_contexts_rejected, rejected_summary, why_not_established
from .responses import no_response, status_text
from .results import AssociationFailed, StoreOutcome

LOGGER = logging.getLogger(__name__)


@dataclass
class _Item:
    """One instance to send: where it comes from and what its file meta says."""

    source: Dataset | Path
    sop_class: str = ""
    sop_instance: str = ""
    transfer_syntax: str = ""
    error: str | None = None


def _describe(source: Dataset | Path | str) -> _Item:
    """SOP class, SOP instance and transfer syntax without reading pixel data (paths: file meta)."""
    if isinstance(source, Dataset):
        item = _Item(source)
        meta = getattr(source, "file_meta", None)
        ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
        if ts is None:  # no file meta: the encoding it was read with, else Explicit VR LE
            ts = ImplicitVRLittleEndian if source.original_encoding[0] else ExplicitVRLittleEndian
        item.transfer_syntax = str(ts)
        item.sop_class = str(source.get("SOPClassUID", ""))
        item.sop_instance = str(source.get("SOPInstanceUID", ""))
    else:
        item = _Item(Path(source))
        try:
            meta = read_file_meta_info(item.source)
            item.sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
            item.sop_instance = str(meta.get("MediaStorageSOPInstanceUID", ""))
            item.transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
            if not (item.sop_class and item.sop_instance and item.transfer_syntax):
                head = dcmread(item.source, stop_before_pixels=True, force=True)
                item.sop_class = item.sop_class or str(head.get("SOPClassUID", ""))
                item.sop_instance = item.sop_instance or str(head.get("SOPInstanceUID", ""))
                item.transfer_syntax = item.transfer_syntax or str(
                    head.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        except Exception as exc:  # noqa: BLE001 - any unreadable file becomes an outcome
            item.error = f"cannot read {item.source.name}: {type(exc).__name__}: {exc}"
    if item.error is None and not (item.sop_class and item.sop_instance):
        item.error = "no SOP Class UID / SOP Instance UID"
    return item


def storage_contexts(items: Sequence[tuple[str, str]]) -> tuple[list[PresentationContext], set[str]]:
    """Presentation contexts for (SOP class, transfer syntax) pairs, within the 128 limit.

    Each SOP class gets one context offering Explicit and Implicit VR Little Endian (the
    fallback every Storage SCP supports, PS3.4 B.4.1); each other transfer syntax present gets its
    own context (PS3.8 9.3.2.2), most frequent first, while room is left.

    Returns
    -------
    contexts, classes_left_out
        The contexts and the SOP classes that did not fit (more than 128 classes).
    """
    per_class: dict[str, Counter[str]] = {}
    for sop, ts in items:
        per_class.setdefault(sop, Counter())[ts] += 1
    contexts = [build_context(sop, list(UNCOMPRESSED)) for sop in list(per_class)[:MAX_CONTEXTS]]
    fitted = {str(cx.abstract_syntax) for cx in contexts}
    extras = sorted(((count, sop, ts) for sop, counts in per_class.items() if sop in fitted
                     for ts, count in counts.items() if ts not in UNCOMPRESSED),
                    key=lambda row: -row[0])
    for _, sop, ts in extras:
        if len(contexts) >= MAX_CONTEXTS:
            LOGGER.info("128 presentation contexts reached; %s instances of %s will be decompressed",
                        UID(ts).name, UID(sop).name)
            continue
        contexts.append(build_context(sop, [ts]))
    return contexts, set(per_class) - fitted


def _prepare(ds: Dataset, ts: str, accepted: set[str], copy_first: bool) -> tuple[Dataset | None, str]:
    """The data set to send over one of the ``accepted`` transfer syntaxes, or None and why.

    ``copy_first``: the data set is the caller's; change a copy (file meta, decompression).
    """
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds = copy.copy(ds) if copy_first else ds
        meta = FileMetaDataset(getattr(ds, "file_meta", Dataset()))
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta
    if ts in accepted:
        return ds, ""
    uid = UID(ts)
    if not any(UID(a).is_little_endian and not UID(a).is_compressed for a in accepted):
        return None, f"no accepted transfer syntax for {uid.name}"
    if uid.is_compressed:
        try:
            out = copy.deepcopy(ds) if copy_first else ds
            out.decompress()
            return out, f"decompressed from {uid.name}"
        except Exception as exc:  # noqa: BLE001 - a decoder problem becomes an outcome
            return None, f"{uid.name} not accepted and decompression failed: {exc}"
    if not uid.is_little_endian:
        return None, f"{uid.name} not accepted (no conversion to little endian)"
    return ds, ""  # implicit <-> explicit little endian: pynetdicom re-encodes


def store_datasets(
    peer: Peer,
    calling_ae: str,
    datasets: Sequence[Dataset | Path],
    *,
    timeout: float = 30,
    tls: PeerTLS | None = None,
    max_pdu: int = 0,
) -> list[StoreOutcome]:
    """Send instances to a Storage SCP with C-STORE over one association (PS3.4 B.2, PS3.7 9.1.1).

    Presentation contexts cover exactly the SOP classes and transfer syntaxes present (see
    :func:`storage_contexts`). An instance whose own transfer syntax is not accepted is sent
    over the accepted uncompressed context (decompressed first where needed).

    Parameters
    ----------
    peer
        The Storage SCP.
    calling_ae
        Our AE title.
    datasets
        Data sets (with file meta) or paths to DICOM files; files are read one at a time.
    timeout
        Seconds for connecting, negotiation and each C-STORE response.
    tls
        DICOM TLS settings overriding the peer's own ``peer.tls`` (used when enabled).
    max_pdu
        Maximum PDU length we receive (0: unlimited).

    Returns
    -------
    list of StoreOutcome
        One per input, in order. Unreadable inputs, rejected presentation contexts and failure
        statuses are not-ok outcomes.

    Raises
    ------
    AssociationFailed
        When the association cannot be established or is lost; ``outcomes`` then holds the
        results so far.
    """
    items = [_describe(source) for source in datasets]
    outcomes: list[StoreOutcome | None] = [None] * len(items)
    for i, item in enumerate(items):
        if item.error:
            outcomes[i] = StoreOutcome(item.sop_instance, None, False, item.error)
    todo = [i for i, item in enumerate(items) if item.error is None]
    if not todo:
        return [o for o in outcomes if o is not None]
    contexts, left_out = storage_contexts([(items[i].sop_class, items[i].transfer_syntax) for i in todo])
    for i in todo:
        if items[i].sop_class in left_out:
            outcomes[i] = StoreOutcome(items[i].sop_instance, None, False,
                                       "more SOP classes than presentation contexts (128)")
    todo = [i for i in todo if outcomes[i] is None]

    assoc, seen = request_association(peer, calling_ae, contexts, timeout=timeout, tls=tls, max_pdu=max_pdu)
    if not assoc.is_established:
        if not all_contexts_rejected(assoc):
            raise AssociationFailed(why_not_established(assoc, seen, peer, timeout, tls), peer=peer)
        summary = rejected_summary(assoc)
        LOGGER.warning("%s rejected every presentation context (%s)", peer, summary)
        for i in todo:
            outcomes[i] = StoreOutcome(items[i].sop_instance, None, False,
                                       f"presentation context rejected by {peer}: {summary}")
        return [o for o in outcomes if o is not None]

    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    rejected = {str(cx.abstract_syntax): cx.status for cx in assoc.rejected_contexts}
    try:
        for msg_id, i in enumerate(todo, start=1):
            outcomes[i] = _store_one(assoc, items[i], accepted, rejected, msg_id % 65536 or 1, peer)
            if not assoc.is_established:
                done = [o for o in outcomes if o is not None]
                raise AssociationFailed(f"{no_response(peer, 'C-STORE', timeout)}; "
                                        f"{sum(o.ok for o in done)} of {len(items)} stored", peer=peer,
                                        outcomes=done)
    finally:
        if assoc.is_established:
            assoc.release()
    result = [o for o in outcomes if o is not None]
    LOGGER.info("C-STORE to %s: %d of %d stored", peer, sum(o.ok for o in result), len(result))
    return result


def _store_one(assoc: Association, item: _Item, accepted: dict[str, set[str]],
               rejected: dict[str, str], msg_id: int, peer: Peer) -> StoreOutcome:
    """One C-STORE request and its outcome."""
    uid = item.sop_instance
    syntaxes = accepted.get(item.sop_class)
    if not syntaxes:
        why = rejected.get(item.sop_class, "not accepted")
        return StoreOutcome(uid, None, False,
                            f"presentation context for {UID(item.sop_class).name} rejected by {peer} ({why})")
    try:
        ds = item.source if isinstance(item.source, Dataset) else dcmread(item.source)
    except Exception as exc:  # noqa: BLE001
        return StoreOutcome(uid, None, False, f"cannot read the file: {type(exc).__name__}: {exc}")
    ds, note = _prepare(ds, item.transfer_syntax, syntaxes, copy_first=isinstance(item.source, Dataset))
    if ds is None:
        return StoreOutcome(uid, None, False, note)
    try:
        status = assoc.send_c_store(ds, msg_id=msg_id)
    except (ValueError, AttributeError) as exc:
        return StoreOutcome(uid, None, False, f"cannot send: {exc}")
    if not status:
        return StoreOutcome(uid, None, False, "no C-STORE response (timeout or abort)")
    code = int(status.Status)
    category = code_to_category(code)
    message = status_text(code, STORAGE_SERVICE_CLASS_STATUS)
    if "ErrorComment" in status:
        message += f" ({status.ErrorComment})"
    if note:
        message += f"; {note}"
    ok = category in ("Success", "Warning")
    if not ok:
        LOGGER.warning("C-STORE of %s to %s failed: %s", uid, peer, message)
    return StoreOutcome(uid, code, ok, message)

