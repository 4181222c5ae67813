"""The node's DICOM client side (SCU) on pynetdicom: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET.

Every call opens one association with the peer, does its work and releases it. Association
problems (connection refused, TCP or ACSE timeout, A-ASSOCIATE-RJ, A-ABORT, every presentation
context rejected where that leaves nothing to do) raise :class:`AssociationFailed`; what a DIMSE
service answers (a failure status, a rejected presentation context for one instance) is returned
as data.

Timeouts: the one ``timeout`` of each call is applied to the AE's TCP connection
(``connection_timeout``), association negotiation and release (``acse_timeout``, PS3.8 9.1.1
ARTIM), each awaited DIMSE message (``dimse_timeout``) and network inactivity
(``network_timeout``), so a peer that never answers costs at most about that long per step.

Security: an association speaks DICOM TLS (PS3.15 B.1) when the peer's own settings
(``peer.tls``, from its configuration block) or a call's ``tls`` argument enable it; a
plain connection to a TLS-only peer fails as :class:`AssociationFailed` with a reason that
says so.

Query/retrieve: C-FIND at STUDY level (completeness, a patient's earlier studies) and SERIES
level (a study's series with Modality and Body Part Examined); C-MOVE and C-GET of a whole study
or of chosen series, one SERIES level request per series on one association.

References: Verification PS3.4 Annex A; Storage PS3.4 Annex B; Query/Retrieve PS3.4 Annex C
(C.4.1 C-FIND, C.4.2 C-MOVE, C.4.3 C-GET, C.6.2 Study Root); DIMSE services and statuses PS3.7
9.1, 9.3 and Annex C; SCP/SCU role selection PS3.7 D.3.3.4; DICOM TLS PS3.15 B.1.
"""

from __future__ import annotations

import copy
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medversa.node.config import Peer, PeerTLS
from medversa.node.dicom_classes import COMPRESSED, STORAGE_CLASSES, UNCOMPRESSED
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, build_role, evt, sop_class
from pynetdicom import _config as _pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

LOGGER = logging.getLogger(__name__)

# pynetdicom logs C-FIND/C-GET/C-MOVE request and response identifiers (Patient ID, names...)
# at INFO by default; the node never logs patient identifiers, so switch that off process-wide.
_pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
_pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_CONTEXTS = 128


#: Storage SOP classes we accept as C-STORE SCP inside a C-GET (PS3.4 B.5): those the node processes.
GET_STORAGE_CLASSES: tuple[str, ...] = tuple(STORAGE_CLASSES)

#: Compressed transfer syntaxes offered (one context each) for C-GET, so the SCP can send
#: instances as stored; pydicom decodes all of them with the installed plug-ins.
GET_COMPRESSED_SYNTAXES: tuple[str, ...] = COMPRESSED

#: C-STORE status we return in a C-GET when ``on_instance`` raises (PS3.4 B.2.3, A7xx: out of
#: resources) and when the received data set cannot be decoded (C000: cannot understand).
STATUS_CALLBACK_FAILED = 0xA702
STATUS_CANNOT_UNDERSTAND = 0xC000

_DATE_TIME_RE = re.compile(r"^\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?$")


# -- public data types ------------------------------------------------------------------------


class AssociationFailed(ConnectionError):
    """No usable association with a peer: refused, rejected, aborted, timed out or unreachable.

    Attributes
    ----------
    peer
        The peer we tried.
    outcomes
        For :func:`store_datasets` only: the per-instance outcomes reached before the
        association was lost (instances not attempted are missing).
    transient
        Whether trying again later may succeed: true for an unreachable peer, a timeout, an
        abort or a transient rejection (PS3.8 7.1.1.9 result 2); false for a permanent
        rejection (result 1), a peer that accepted no presentation context, and TLS settings
        that cannot work. Callers decide on retries from this, not from the message.
    """

    def __init__(self, message: str, *, peer: Peer | None = None,
                 outcomes: Sequence["StoreOutcome"] = (), transient: bool = True) -> None:
        super().__init__(message)
        self.peer = peer
        self.outcomes: list[StoreOutcome] = list(outcomes)
        self.transient = transient


class QueryFailed(RuntimeError):
    """The peer answered a C-FIND with a failure status (PS3.4 C.4.1.1.4)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StoreOutcome:
    """What happened to one instance of :func:`store_datasets`.

    ``status`` is the C-STORE response status (PS3.4 B.2.3), ``None`` when no request was sent
    (unreadable file, rejected presentation context) or no response came. ``ok`` is true for
    Success and Warning statuses (the peer stored the instance).
    """

    sop_instance_uid: str
    status: int | None
    ok: bool
    message: str


@dataclass
class StudyMatch:
    """One study a Study Root C-FIND at STUDY level returned (PS3.4 C.6.2.1.2)."""

    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modalities_in_study: list[str] = field(default_factory=list)
    number_of_instances: int | None = None


@dataclass
class SeriesMatch:
    """One series a Study Root C-FIND at SERIES level returned (PS3.4 C.6.2.1.2)."""

    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    series_number: int | None = None
    number_of_instances: int | None = None


@dataclass
class RetrieveOutcome:
    """The result of a C-MOVE or C-GET (PS3.4 C.4.2.1.6, C.4.3.1.6).

    Counts are the final response's Number of Completed/Failed/Warning Sub-operations (the
    last pending response's where the final one leaves them out). ``ok`` is true when the final
    status is Success or Warning and no sub-operation failed.
    """

    completed: int
    failed: int
    warning: int
    status: int | None
    ok: bool
    message: str


# -- association handling ---------------------------------------------------------------------


def client_ssl_context(tls: PeerTLS) -> ssl.SSLContext:
    """A TLS client context (PS3.15 B.1, TLS 1.2 or later) from a peer's TLS settings.

    Our certificate and key are presented to the server (a passphrase-protected key is opened
    with the passphrase from the environment variable the settings name); the server's
    certificate chain is verified against ``ca_certificates`` when ``verify_peers`` is set. Host
    names are not checked (PACS certificates rarely name the address we use); the CA is the
    trust anchor.
    """
    cafile = str(tls.ca_certificates) if tls.ca_certificates else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED if tls.verify_peers else ssl.CERT_NONE
    if tls.certificate and tls.private_key:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key), password=tls.private_key_password())
    return context


def _tls_for(peer: Peer, tls: PeerTLS | None) -> PeerTLS | None:
    """The TLS settings of an association: the caller's, else the peer's own (``peer.tls``)."""
    return tls if tls is not None else peer.tls


def _make_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@dataclass
class _Negotiation:
    """What we saw while requesting an association (for the error message)."""

    connected: bool = False
    pdus: list[Any] = field(default_factory=list)
    seconds: float = 0.0


def _request(
    peer: Peer,
    calling_ae: str,
    contexts: list[PresentationContext],
    *,
    timeout: float,
    tls: PeerTLS | None,
    max_pdu: int = 0,
    ext_neg: list[Any] | None = None,
    handlers: list[Any] | None = None,
) -> tuple[Association, _Negotiation]:
    """Request an association (PS3.8 7.1); return it whether established or not."""
    seen = _Negotiation()

    def on_open(event: evt.Event) -> None:
        seen.connected = True

    def on_pdu(event: evt.Event) -> None:
        seen.pdus.append(event.pdu)

    ae = _make_ae(calling_ae, timeout)
    tls = _tls_for(peer, tls)
    try:
        tls_args = (client_ssl_context(tls), peer.host) if tls is not None and tls.enabled else None
    except (OSError, ValueError) as exc:  # missing file, bad key or passphrase, unset variable
        message = f"DICOM TLS to {peer} not possible with its settings: {type(exc).__name__}: {exc}"
        LOGGER.warning("%s", message)
        raise AssociationFailed(message, peer=peer, transient=False) from exc
    evt_handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_PDU_RECV, on_pdu), *(handlers or [])]
    LOGGER.debug("requesting association %s -> %s (%d contexts)", calling_ae, peer, len(contexts))
    started = time.monotonic()
    try:
        assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title,
                             max_pdu=max_pdu, ext_neg=ext_neg, tls_args=tls_args,
                             evt_handlers=evt_handlers)
    except OSError as exc:  # e.g. socket.gaierror: the host name does not resolve
        message = f"cannot connect to {peer}: {type(exc).__name__}: {exc.strerror or exc}"
        LOGGER.warning("%s", message)
        raise AssociationFailed(message, peer=peer) from exc
    seen.seconds = time.monotonic() - started
    assoc.unbind(evt.EVT_PDU_RECV, on_pdu)
    return assoc, seen


def _all_contexts_rejected(assoc: Association) -> bool:
    """The peer sent A-ASSOCIATE-AC but accepted none of our presentation contexts."""
    primitive = assoc.acceptor.primitive
    return primitive is not None and primitive.result == 0x00 and not assoc.accepted_contexts


def _rejected_summary(assoc: Association) -> str:
    parts = [f"{UID(cx.abstract_syntax).name}: {cx.status}" for cx in assoc.rejected_contexts]
    return "; ".join(parts) or "no presentation context accepted"


def _why_not_established(assoc: Association, seen: _Negotiation, peer: Peer, timeout: float,
                         tls: PeerTLS | None) -> str:
    """Explain a failed association request, naming the peer."""
    tls = _tls_for(peer, tls)
    if not seen.connected:
        if seen.seconds >= 0.9 * timeout:
            return f"cannot connect to {peer}: no TCP connection within {timeout} s"
        return f"cannot connect to {peer}: {_diagnose_connect(peer, timeout - seen.seconds, tls)}"
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return (f"association rejected by {peer} ({primitive.result_str}; source: "
                f"{primitive.source_str}; reason: {primitive.reason_str})")
    if _all_contexts_rejected(assoc):
        return (f"{peer} accepted the association but rejected every presentation context "
                f"({_rejected_summary(assoc)})")
    aborts = [pdu for pdu in seen.pdus if isinstance(pdu, A_ABORT_RQ)]
    if aborts:
        pdu = aborts[0]
        return (f"association aborted by {peer} (A-ABORT source {pdu.source}, "
                f"reason {pdu.reason_diagnostic})")
    if not seen.pdus and seen.seconds >= 0.9 * timeout:
        return f"no answer from {peer} to the association request within {timeout} s (ACSE timeout)"
    if not seen.pdus:
        hint = ("" if tls is not None and tls.enabled else
                " (a peer that accepts DICOM TLS only does this to a plain connection: check its tls settings)")
        return f"association aborted by {peer}: connection closed without an A-ASSOCIATE response{hint}"
    return f"association with {peer} failed (unexpected answer: {type(seen.pdus[-1]).__name__})"


def _transient(assoc: Association) -> bool:
    """Whether a failed association request may succeed later (see :class:`AssociationFailed`)."""
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return primitive.result != 0x01  # 0x01 rejected-permanent, 0x02 rejected-transient
    return not _all_contexts_rejected(assoc)


def _diagnose_connect(peer: Peer, budget: float, tls: PeerTLS | None) -> str:
    """Why pynetdicom could not connect: retry a plain TCP connection (within what is left of
    the timeout) to get the operating system's error."""
    started = time.monotonic()
    budget = max(0.1, min(budget, 5.0))
    try:
        with socket.create_connection((peer.host, peer.port), timeout=budget):
            pass
    except TimeoutError:
        return f"no TCP connection within {budget:.1f} s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if tls is not None and tls.enabled:
        return "the TCP port is open but the TLS handshake failed (certificates or protocol)"
    elapsed = time.monotonic() - started
    return f"the connection failed (a retry connected after {elapsed:.1f} s)"


class _Open:
    """Context manager: an established association, released on exit (aborted on errors that
    leave it in an unknown state)."""

    def __init__(self, peer: Peer, calling_ae: str, contexts: list[PresentationContext], *,
                 timeout: float, tls: PeerTLS | None, ext_neg: list[Any] | None = None,
                 handlers: list[Any] | None = None) -> None:
        self.peer = peer
        self.calling_ae = calling_ae
        self.contexts = contexts
        self.timeout = timeout
        self.tls = tls
        self.ext_neg = ext_neg
        self.handlers = handlers
        self.assoc: Association | None = None

    def __enter__(self) -> Association:
        assoc, seen = _request(self.peer, self.calling_ae, self.contexts, timeout=self.timeout,
                               tls=self.tls, ext_neg=self.ext_neg, handlers=self.handlers)
        if not assoc.is_established:
            message = _why_not_established(assoc, seen, self.peer, self.timeout, self.tls)
            LOGGER.warning("%s", message)
            raise AssociationFailed(message, peer=self.peer, transient=_transient(assoc))
        self.assoc = assoc
        return assoc

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if self.assoc is None or not self.assoc.is_established:
            return
        if exc_type is None or issubclass(exc_type, (AssociationFailed, QueryFailed)):
            self.assoc.release()
        else:
            self.assoc.abort()


def _lost(peer: Peer, service: str, timeout: float) -> str:
    return (f"no {service} response from {peer} within {timeout} s, or the association was "
            f"aborted")


def _status_text(code: int, table: dict[int, tuple[str, str]]) -> str:
    category, text = table.get(code, GENERAL_STATUS.get(code, (code_to_category(code), "")))
    return f"0x{code:04X} {category}" + (f": {text}" if text else "")


# -- C-ECHO -----------------------------------------------------------------------------------


def echo(peer: Peer, calling_ae: str, *, timeout: float = 10, tls: PeerTLS | None = None) -> bool:
    """Verify a peer with C-ECHO (PS3.4 Annex A, PS3.7 9.1.5).

    Returns
    -------
    bool
        Whether the peer answered with status Success (0x0000).

    Raises
    ------
    AssociationFailed
        When no association could be established.
    """
    with _Open(peer, calling_ae, [build_context(sop_class.Verification)], timeout=timeout,
               tls=tls) as assoc:
        status = assoc.send_c_echo(msg_id=1)
    if not status:
        LOGGER.warning("%s", _lost(peer, "C-ECHO", timeout))
        return False
    code = int(status.Status)
    LOGGER.info("C-ECHO %s: status 0x%04X", peer, code)
    return code == 0x0000


# -- C-STORE ----------------------------------------------------------------------------------


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

    assoc, seen = _request(peer, calling_ae, contexts, timeout=timeout, tls=tls, max_pdu=max_pdu)
    if not assoc.is_established:
        if not _all_contexts_rejected(assoc):
            raise AssociationFailed(_why_not_established(assoc, seen, peer, timeout, tls), peer=peer)
        summary = _rejected_summary(assoc)
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
                raise AssociationFailed(f"{_lost(peer, 'C-STORE', timeout)}; "
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
    message = _status_text(code, STORAGE_SERVICE_CLASS_STATUS)
    if "ErrorComment" in status:
        message += f" ({status.ErrorComment})"
    if note:
        message += f"; {note}"
    ok = category in ("Success", "Warning")
    if not ok:
        LOGGER.warning("C-STORE of %s to %s failed: %s", uid, peer, message)
    return StoreOutcome(uid, code, ok, message)


# -- C-FIND -----------------------------------------------------------------------------------


def _c_find(assoc: Association, identifier: Dataset, peer: Peer, timeout: float,
            msg_id: int = 1) -> list[Dataset]:
    """All pending identifiers of one Study Root C-FIND (PS3.4 C.4.1.2)."""
    matches: list[Dataset] = []
    for status, answer in assoc.send_c_find(
            identifier, sop_class.StudyRootQueryRetrieveInformationModelFind, msg_id=msg_id):
        if not status:
            raise AssociationFailed(_lost(peer, "C-FIND", timeout), peer=peer)
        code = int(status.Status)
        category = code_to_category(code)
        if category == "Pending":
            if answer is not None:
                matches.append(answer)
            continue
        if category in ("Success", "Cancel"):
            break
        text = _status_text(code, QR_FIND_SERVICE_CLASS_STATUS)
        if "ErrorComment" in status:
            text += f" ({status.ErrorComment})"
        raise QueryFailed(f"C-FIND at {peer} failed: {text}", code)
    return matches


def _find_context() -> list[PresentationContext]:
    return [build_context(sop_class.StudyRootQueryRetrieveInformationModelFind)]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def count_study_instances(peer: Peer, calling_ae: str, study_uid: str, *, timeout: float = 30,
                          tls: PeerTLS | None = None) -> int | None:
    """Number of Study Related Instances the peer holds for one study (PS3.4 C.6.2.1.2, C.3.4).

    Returns
    -------
    int or None
        ``None`` when the study is unknown, the peer leaves the attribute empty, or answers
        with a failure status.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    identifier.NumberOfStudyRelatedInstances = ""
    with _Open(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        try:
            matches = _c_find(assoc, identifier, peer, timeout)
        except QueryFailed as exc:
            LOGGER.warning("%s", exc)
            return None
    counts = [_int_or_none(m.get("NumberOfStudyRelatedInstances")) for m in matches
              if str(m.get("StudyInstanceUID", study_uid)) == study_uid]
    if not counts:
        LOGGER.info("study %s unknown to %s", study_uid, peer)
        return None
    return counts[0]


def _modalities(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values if str(v).strip()]


def _date_time_key(date: str, time_: str) -> str:
    """YYYYMMDDHHMMSS (time right-padded with zeros; fractions dropped); '' without a date."""
    date = (date or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return ""
    digits = (time_ or "").strip().split(".")[0]
    digits = digits if digits.isdigit() else ""
    return date + digits.ljust(6, "0")[:6]


def _before_key(before: str) -> tuple[str, bool]:
    """``before`` as YYYYMMDD[HHMMSS] key and whether it carries a time."""
    if not _DATE_TIME_RE.match(before):
        raise ValueError(f"before={before!r} is not YYYYMMDD[HHMMSS]")
    has_time = len(before) > 8
    return _date_time_key(before[:8], before[8:]), has_time


def _is_before(match: StudyMatch, key: str, has_time: bool) -> bool:
    """Strictly earlier than ``key``; a study on the same day without a time is not."""
    if not match.study_date:
        return False
    if not has_time or match.study_date != key[:8]:
        return match.study_date < key[:8]
    if not match.study_time.strip():
        return False
    return _date_time_key(match.study_date, match.study_time) < key


def find_prior_studies(
    peer: Peer,
    calling_ae: str,
    *,
    patient_id: str,
    modality: str | None = None,
    before: str | None = None,
    exclude_study_uid: str | None = None,
    timeout: float = 30,
    tls: PeerTLS | None = None,
) -> list[StudyMatch]:
    """A patient's earlier studies, most recent first (Study Root C-FIND, PS3.4 C.6.2.1).

    The query asks for STUDY level with Patient ID, Study Date range ``-YYYYMMDD`` and
    Modalities in Study (PS3.4 C.2.2.2: single value, range matching). Everything is also
    checked here, because not every PACS matches all keys: studies are kept only if they are
    strictly before ``before`` (date and time; same-day studies without a time are dropped when
    ``before`` has one), are not ``exclude_study_uid`` and include ``modality`` (a study whose
    modalities the PACS does not return is looked up at SERIES level).

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    QueryFailed
        When the peer answers with a failure status.
    ValueError
        When ``before`` is not YYYYMMDD[HHMMSS].
    """
    key, has_time = _before_key(before) if before else ("", False)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    identifier.StudyInstanceUID = ""
    identifier.StudyDate = f"-{key[:8]}" if key else ""
    identifier.StudyTime = ""
    identifier.AccessionNumber = ""
    identifier.StudyDescription = ""
    identifier.ModalitiesInStudy = modality or ""
    identifier.NumberOfStudyRelatedInstances = ""
    wanted = modality.strip().upper() if modality else None
    with _Open(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        answers = _c_find(assoc, identifier, peer, timeout)
        studies: list[StudyMatch] = []
        for answer in answers:
            if str(answer.get("PatientID", patient_id)) != patient_id:
                continue  # a PACS that ignored the key
            match = StudyMatch(
                study_instance_uid=str(answer.get("StudyInstanceUID", "")),
                study_date=str(answer.get("StudyDate", "") or ""),
                study_time=str(answer.get("StudyTime", "") or ""),
                accession_number=str(answer.get("AccessionNumber", "") or ""),
                study_description=str(answer.get("StudyDescription", "") or ""),
                modalities_in_study=_modalities(answer.get("ModalitiesInStudy")),
                number_of_instances=_int_or_none(answer.get("NumberOfStudyRelatedInstances")),
            )
            if not match.study_instance_uid or match.study_instance_uid == exclude_study_uid:
                continue
            if key and not _is_before(match, key, has_time):
                continue
            if wanted and not match.modalities_in_study:
                match.modalities_in_study = _series_modalities(assoc, match.study_instance_uid, peer, timeout)
            if wanted and wanted not in match.modalities_in_study:
                continue
            studies.append(match)
    studies.sort(key=lambda m: _date_time_key(m.study_date, m.study_time), reverse=True)
    LOGGER.info("C-FIND at %s: %d prior studies", peer, len(studies))
    return studies


def _series_modalities(assoc: Association, study_uid: str, peer: Peer, timeout: float) -> list[str]:
    """Modalities of a study's series (SERIES level C-FIND, PS3.4 C.6.2.1.2)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = ""
    identifier.Modality = ""
    found: list[str] = []
    for answer in _c_find(assoc, identifier, peer, timeout, msg_id=2):
        for value in _modalities(answer.get("Modality")):
            if value not in found:
                found.append(value)
    return found


def find_study_series(peer: Peer, calling_ae: str, study_uids: Sequence[str], *, timeout: float = 30,
                      tls: PeerTLS | None = None) -> dict[str, list[SeriesMatch]]:
    """The series of each study, in Series Number order (Study Root C-FIND at SERIES level,
    PS3.4 C.6.2.1.2), all on one association.

    Keys asked: Series Instance UID (unique), Modality, Body Part Examined, Series Description,
    Series Number and Number of Series Related Instances (optional keys a PACS may leave empty).

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    QueryFailed
        When the peer answers with a failure status.
    """
    found: dict[str, list[SeriesMatch]] = {}
    with _Open(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        for msg_id, study_uid in enumerate(study_uids, start=1):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.StudyInstanceUID = study_uid
            identifier.SeriesInstanceUID = ""
            identifier.Modality = ""
            identifier.BodyPartExamined = ""
            identifier.SeriesDescription = ""
            identifier.SeriesNumber = ""
            identifier.NumberOfSeriesRelatedInstances = ""
            series = []
            for answer in _c_find(assoc, identifier, peer, timeout, msg_id=msg_id):
                uid = str(answer.get("SeriesInstanceUID", "") or "")
                if not uid or str(answer.get("StudyInstanceUID", study_uid)) != study_uid:
                    continue  # a PACS that ignored the study key
                series.append(SeriesMatch(
                    series_instance_uid=uid,
                    modality=(_modalities(answer.get("Modality")) or [""])[0],
                    body_part_examined=str(answer.get("BodyPartExamined", "") or "").strip().upper(),
                    series_description=str(answer.get("SeriesDescription", "") or ""),
                    series_number=_int_or_none(answer.get("SeriesNumber")),
                    number_of_instances=_int_or_none(answer.get("NumberOfSeriesRelatedInstances")),
                ))
            series.sort(key=lambda m: (m.series_number is None, m.series_number or 0))
            found[study_uid] = series
    return found


# -- C-MOVE and C-GET -------------------------------------------------------------------------


def _retrieve_identifiers(study_uid: str, series_uids: Sequence[str] | None) -> list[Dataset]:
    """One STUDY level identifier, or one SERIES level identifier per series (PS3.4 C.4.2.2.1:
    unique keys down to the retrieve level)."""
    if not series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return [identifier]
    out = []
    for uid in series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = uid
        out.append(identifier)
    return out


def _collect(responses: Iterator[tuple[Dataset, Dataset | None]], service: str, peer: Peer,
             timeout: float, table: dict[int, tuple[str, str]]) -> RetrieveOutcome:
    """Fold C-MOVE/C-GET responses into a :class:`RetrieveOutcome` (PS3.4 C.4.2.1.6, C.4.3.1.6)."""
    counts = {"completed": 0, "failed": 0, "warning": 0}
    names = {"completed": "NumberOfCompletedSuboperations",
             "failed": "NumberOfFailedSuboperations",
             "warning": "NumberOfWarningSuboperations"}
    final: Dataset | None = None
    for status, _identifier in responses:
        if not status:
            raise AssociationFailed(_lost(peer, service, timeout), peer=peer)
        for key, keyword in names.items():
            value = _int_or_none(status.get(keyword))
            if value is not None:
                counts[key] = value
        if code_to_category(int(status.Status)) != "Pending":
            final = status
            break
    if final is None:
        raise AssociationFailed(f"{service} at {peer} ended without a final response", peer=peer)
    code = int(final.Status)
    category = code_to_category(code)
    ok = category in ("Success", "Warning") and counts["failed"] == 0
    message = (f"{service}: {counts['completed']} completed, {counts['failed']} failed, "
               f"{counts['warning']} warning; status {_status_text(code, table)}")
    if "ErrorComment" in final:
        message += f" ({final.ErrorComment})"
    (LOGGER.info if ok else LOGGER.warning)("%s from %s", message, peer)
    return RetrieveOutcome(counts["completed"], counts["failed"], counts["warning"], code, ok, message)


def _combine(outcomes: list[RetrieveOutcome]) -> RetrieveOutcome:
    """One outcome for the per-series retrieves of a study: counts summed, the first failure's
    status (else the last status), every message."""
    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if not o.ok]
    status = failed[0].status if failed else outcomes[-1].status
    return RetrieveOutcome(sum(o.completed for o in outcomes), sum(o.failed for o in outcomes),
                           sum(o.warning for o in outcomes), status, not failed,
                           "; ".join(o.message for o in outcomes))


def move_study(peer: Peer, calling_ae: str, study_uid: str, destination_ae: str, *,
               series_uids: Sequence[str] | None = None, timeout: float = 300,
               tls: PeerTLS | None = None) -> RetrieveOutcome:
    """Ask the peer to send a study, or some of its series, to ``destination_ae`` (Study Root
    C-MOVE, PS3.4 C.4.2).

    With ``series_uids`` one SERIES level C-MOVE is sent per series, in the order given, on
    one association: a PACS that stops a retrieve at its first failed sub-operation (Orthanc
    1.10 does) then loses only that series. The peer must know ``destination_ae`` (its
    address book); an unknown destination gives ``ok=False`` (status 0xA801). ``timeout``
    bounds each wait for the next response.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    context = [build_context(sop_class.StudyRootQueryRetrieveInformationModelMove)]
    outcomes = []
    with _Open(peer, calling_ae, context, timeout=timeout, tls=tls) as assoc:
        for msg_id, identifier in enumerate(_retrieve_identifiers(study_uid, series_uids), start=1):
            responses = assoc.send_c_move(identifier, destination_ae,
                                          sop_class.StudyRootQueryRetrieveInformationModelMove, msg_id=msg_id)
            outcomes.append(_collect(responses, f"C-MOVE to {destination_ae}", peer, timeout,
                                     QR_MOVE_SERVICE_CLASS_STATUS))
    return _combine(outcomes)


def get_contexts() -> tuple[list[PresentationContext], list[Any]]:
    """Contexts and SCP role selection items for a Study Root C-GET (PS3.4 C.4.3, PS3.7 D.3.3.4).

    One uncompressed context per storage class in :data:`GET_STORAGE_CLASSES`, plus one per
    compressed syntax in :data:`GET_COMPRESSED_SYNTAXES`, so the SCP may send instances as stored.
    """
    contexts = [build_context(sop_class.StudyRootQueryRetrieveInformationModelGet)]
    for uid in GET_STORAGE_CLASSES:
        contexts.append(build_context(uid, list(UNCOMPRESSED)))
        contexts.extend(build_context(uid, [ts]) for ts in GET_COMPRESSED_SYNTAXES)
    if len(contexts) > MAX_CONTEXTS:  # pragma: no cover - guarded by the constants above
        raise ValueError(f"{len(contexts)} presentation contexts exceed {MAX_CONTEXTS}")
    roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE_CLASSES]
    return contexts, roles


def get_study(peer: Peer, calling_ae: str, study_uid: str, on_instance: Callable[[Dataset], int | None], *,
              series_uids: Sequence[str] | None = None, timeout: float = 300,
              tls: PeerTLS | None = None) -> RetrieveOutcome:
    """Retrieve a study, or some of its series, over our own association (Study Root C-GET,
    PS3.4 C.4.3); with ``series_uids`` one SERIES level C-GET per series, as for
    :func:`move_study`.

    The peer sends each instance with C-STORE on the same association; ``on_instance`` gets it
    (with file meta) and may return a C-STORE failure status (PS3.4 B.2.3) to refuse it (None
    or 0 accepts it). If it raises, that C-STORE is answered with 0xA702 (out of resources), an
    undecodable data set with 0xC000; the peer counts those as failed sub-operations.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    def on_store(event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception:  # noqa: BLE001 - answered with a status
            LOGGER.warning("C-GET from %s: undecodable instance", peer, exc_info=True)
            return STATUS_CANNOT_UNDERSTAND
        try:
            status = on_instance(ds)
        except Exception as exc:  # noqa: BLE001 - answered with a status
            LOGGER.warning("C-GET from %s: handling instance %s failed: %s", peer,
                           ds.get("SOPInstanceUID", "?"), type(exc).__name__, exc_info=True)
            return STATUS_CALLBACK_FAILED
        return int(status or 0x0000)

    contexts, roles = get_contexts()
    outcomes = []
    with _Open(peer, calling_ae, contexts, timeout=timeout, tls=tls, ext_neg=roles,
               handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for msg_id, identifier in enumerate(_retrieve_identifiers(study_uid, series_uids), start=1):
            responses = assoc.send_c_get(identifier, sop_class.StudyRootQueryRetrieveInformationModelGet,
                                         msg_id=msg_id)
            outcomes.append(_collect(responses, "C-GET", peer, timeout, QR_GET_SERVICE_CLASS_STATUS))
    return _combine(outcomes)
