"""Our Storage and Verification SCP (pynetdicom), with thin handlers bound as functions.

Association policy (PS3.8 7.1.1.9 A-ASSOCIATE-RJ): a calling AE title outside the
allow-list is rejected permanently by the service user with reason 3 (calling AE
title not recognised); a peer address outside the allow-list with reason 1 (no
reason given); when the spool's disk passes the refusal level, transiently by the
service provider (presentation) with reason 1 (temporary congestion). Every
association, rejection and received instance is audited.

Presentation contexts (PS3.8 9.3.3.2): a SOP class we do not store, or one proposed
only with transfer syntaxes we cannot decode, is refused at negotiation; each refusal
is logged with the SOP class and the reason.

C-STORE statuses (PS3.4 B.2.3), each failure logged and audited with its reason and
sent back in Error Comment (0000,0902): 0x0000 Success after the instance is durably
spooled and recorded; 0xA700 Out of Resources when the disk is full; 0xA900 when
the data set does not match the SOP class (its SOP Class or Instance UID differs
from the request, or an image instance lacks Pixel Data or Rows/Columns/Bits
Allocated); 0xC000 (Cannot understand) when the data set cannot be parsed, is
truncated, lacks its identifying UIDs, or its Pixel Data disagrees with the Image
Pixel module (:func:`medversa.dicom_mapping.pixels.check_pixel_data`: nothing is
ever allocated from header dimensions); 0xC001 when handling fails unexpectedly.

Size limits: an instance over ``scp.max_instance_bytes``, or one that would take its
study's spooled total over ``scp.max_study_bytes``, gets 0xA700 Refused: Out of
Resources with an Error Comment naming the limit. PS3.4 B.2.3 puts "the SCP does not
have the resources to store it" in the Refused category; 0xC000 (Cannot understand)
would claim the data set cannot be parsed, which is not so. What the study already
holds is kept and processed.

Memory: data sets are received with pynetdicom's chunked receive
(``STORE_RECV_CHUNKED_DATASET``, set by :mod:`medversa.node.pynetdicom_settings`): each
fragment goes to disk as it arrives, into the spool's own ``.incoming`` folder
(:class:`medversa.node.spool.IncomingFile`), at most ``max_instance_bytes`` of it; the rest of
an over-size data set is read and dropped. An association holds one PDU, plus the one
instance being checked once it is complete: memory is bounded by ``max_associations x
max_instance_bytes``. pynetdicom 3 makes that file with ``tempfile.NamedTemporaryFile`` in
the system's temporary folder and offers no setting for the folder;
:func:`route_chunked_receive` points the name its decoder calls at a function that gives
our listening AE's associations an :class:`IncomingFile` (and every other association
pynetdicom's own temporary file), so the file lands on the spool's disk (a rename, not a
copy, makes it a spooled instance; a RAM-backed ``/tmp`` never fills) and a full disk or
the size limit still ends in a C-STORE status.

Rows: the spooled, fsynced file is the durable record; its row is written by the
:class:`Recorder` thread. When the job store cannot be written (its disk full), the
rows wait in the recorder and are written when it can be again, without a restart.

Patient identifiers: every log line about a data set is written inside
:func:`medversa.node.phi.identifiers_scope` with the identifiers read from its file, so
exception texts and library warnings quoting a value are scrubbed before they are logged
or audited.
"""

from __future__ import annotations

import errno
import logging
import queue
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom import AE, dimse_messages, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from sqlalchemy import select
from sqlalchemy.exc import DisconnectionError, OperationalError

from medversa.dicom_mapping import ANNOTATION_CLASSES, PixelDataError, check_pixel_data
from medversa.dicom_mapping import header as h

from . import phi
from .dicom_classes import ACCEPTED_SYNTAXES, STORAGE_CLASSES
from .job_states import move_study_state
from .job_store import Instance, Store, Study, StudyState, utcnow
from .phi import pseudonym
from .pynetdicom_settings import configure_pynetdicom
from .settings import NodeSettings
from .spool import IncomingFile, Spool, SpoolFull, StudyFull

LOGGER = logging.getLogger(__name__)

TRANSFER_SYNTAXES = list(ACCEPTED_SYNTAXES)

#: The only attributes the receiving path reads (the full data set is parsed by the worker).
HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
               "BodyPartExamined", "StudyDescription", "PatientID", "StudyDate", "StudyTime"]

# Named C-STORE statuses (PS3.4 B.2.3 / PS3.7 C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC001

STATUS_NAMES = {SUCCESS: "Success", OUT_OF_RESOURCES: "Out of Resources",
                DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data Set does not match SOP Class",
                CANNOT_UNDERSTAND: "Cannot understand", PROCESSING_FAILURE: "Processing failure"}

#: Presentation context results of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).
_CONTEXT_RESULTS = {1: "refused by the node", 2: "no reason given", 3: "abstract syntax (SOP class) not supported",
                    4: "none of the proposed transfer syntaxes is supported"}

_IDENTIFYING = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: Type 1 attributes of the Image Pixel module (PS3.3 C.7.6.3) the storage SOP classes we take require.
_IMAGE_PIXEL = ("PixelData", "Rows", "Columns", "BitsAllocated")


def inspect_instance(ds: Dataset, abstract_syntax: str, affected_sop_uid: str) -> tuple[int, str] | None:
    """The failure status and reason a received data set earns, or None when it may be stored.

    Checked before anything is written, in this order (PS3.4 B.2.3): truncated or wrong value
    lengths, missing identifying UIDs (0xC000); SOP Class / Instance UID differing from the
    request (0xA900); an image without the Image Pixel module (0xA900); Pixel Data that
    disagrees with Rows/Columns/Bits Allocated/Number of Frames, or over the size limits
    (0xC000). Only lengths are compared: no pixel array is ever allocated here.
    """
    cut = h.truncation(ds)
    if cut:
        return CANNOT_UNDERSTAND, cut
    missing = [k for k in _IDENTIFYING if not h.text(ds, k)]
    if missing:
        return CANNOT_UNDERSTAND, f"no {', '.join(missing)} in the data set"
    sop_class, sop_uid = h.text(ds, "SOPClassUID"), h.text(ds, "SOPInstanceUID")
    if sop_class != abstract_syntax:
        return (DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Class UID {sop_class} of the data set is not the presentation context's {abstract_syntax}")
    if sop_uid != affected_sop_uid:
        return (DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Instance UID {sop_uid} of the data set is not the request's {affected_sop_uid}")
    if sop_class in STORAGE_CLASSES:
        absent = [k for k in _IMAGE_PIXEL if h.value(ds, k) is None]
        if absent:
            return (DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"no {', '.join(absent)}: {STORAGE_CLASSES[sop_class]} needs the Image Pixel module")
        try:
            check_pixel_data(ds)
        except PixelDataError as exc:
            return CANNOT_UNDERSTAND, str(exc)
    return None


def check_received(data: bytes | Path, abstract_syntax: str, affected_sop_uid: str
                   ) -> tuple[Dataset | None, int, str]:
    """Parse a received data set (its Part 10 bytes or file) and decide on it; never raises (every
    failure is a status).

    Returns the attributes the recorder needs (None when refused), the status and the reason.
    """
    try:
        full = dcmread(data if isinstance(data, Path) else BytesIO(data))
        problem = inspect_instance(full, abstract_syntax, affected_sop_uid)
        if problem is not None:
            return None, *problem
        return _header(full), SUCCESS, ""
    except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's malformed data
        return None, CANNOT_UNDERSTAND, f"cannot parse the data set: {type(exc).__name__}: {exc}"


def _header(ds: Dataset) -> Dataset:
    """Only the attributes the recorder reads (the worker parses the spooled file itself)."""
    out = Dataset()
    for keyword in HEADER_TAGS:
        if keyword in ds:
            out[keyword] = ds[keyword]
    return out


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _refused_context(cx: PresentationContext) -> str:
    """'SOP class (UID): why' for a presentation context the node refused."""
    why = _CONTEXT_RESULTS.get(cx.result, f"result {cx.result}")
    if cx.result == 4:
        why += f": {', '.join(_uid_name(ts) for ts in cx.transfer_syntax) or 'none proposed'}"
    return f"{_uid_name(cx.abstract_syntax)}: {why}"


#: The listening AEs whose associations receive into their spool, and the factory pynetdicom had.
_RECEIVERS: weakref.WeakKeyDictionary[AE, StorageSCP] = weakref.WeakKeyDictionary()
_SYSTEM_TEMPORARY_FILE = tempfile.NamedTemporaryFile


def _incoming_file(*args: object, **kwargs: object) -> object:
    """Called by pynetdicom's decoder where it would make its temporary file for a C-STORE data set.

    It runs on the association's DUL thread (the thread that decodes P-DATA): an association of
    one of our listening AEs gets an :class:`IncomingFile` in that SCP's spool; any other (an
    SCU's C-GET in the same process) gets pynetdicom's usual temporary file.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    receiver = _RECEIVERS.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if receiver is None:
        return _SYSTEM_TEMPORARY_FILE(*args, **kwargs)  # type: ignore[call-overload]
    return receiver.open_incoming(assoc)


def route_chunked_receive(receiver: StorageSCP) -> None:
    """Receive C-STORE data sets in chunks to disk, into ``receiver``'s spool (module docstring).

    ``STORE_RECV_CHUNKED_DATASET`` is pynetdicom's process-wide switch; handlers of other
    listeners in the process still read ``event.dataset`` as before (pynetdicom reads the file).
    """
    if not callable(getattr(dimse_messages, "NamedTemporaryFile", None)):
        raise RuntimeError("this pynetdicom no longer makes its chunked-receive file with "
                           "dimse_messages.NamedTemporaryFile: the SCP cannot receive into its spool")
    _RECEIVERS[receiver.ae] = receiver
    configure_pynetdicom(chunked_receive=True)
    dimse_messages.NamedTemporaryFile = _incoming_file  # type: ignore[attr-defined]


def hash_phi(value: str) -> str:
    """A stable, non-reversible reference for a patient identifier in rows: the keyed hash of
    :func:`medversa.node.phi.pseudonym` (a plain hash of a Patient ID can be found by trying IDs)."""
    return pseudonym(value)


class StorageSCP:
    """The listening AE: access policy, durable spooling, recording."""

    def __init__(self, settings: NodeSettings, store: Store, spool: Spool, metrics: object | None = None) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.metrics = metrics
        self._server = None
        self.recorder = Recorder(store, rescan=lambda: record_spooled_files(store, spool))
        #: Data sets being received: file path -> (association, file); the C-STORE handler takes its own.
        self._incoming: dict[str, tuple[object, IncomingFile]] = {}
        self._incoming_lock = threading.Lock()
        cfg = settings.scp
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu
        ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = 30
        ae.dimse_timeout = cfg.network_timeout_s
        ae.add_supported_context(Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        for uid in ANNOTATION_CLASSES:  # a reader's annotations (SR, GSPS): they start an ask (node/ask.py)
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        self.ae = ae

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.settings.scp
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        route_chunked_receive(self)
        self._server = self.ae.start_server((cfg.bind, cfg.port), block=False, evt_handlers=handlers,
                                            ssl_context=self._ssl_context())
        # No Nagle delay: a small PDU (a C-STORE response) must not wait for a delayed ACK.
        # Accepted sockets inherit the option on Linux.
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        LOGGER.info("SCP %s listening on %s:%d%s", cfg.ae_title, cfg.bind, cfg.port,
                    " (TLS)" if cfg.tls.enabled else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.recorder.flush()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.scp.tls
        if not tls.enabled:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key), password=tls.private_key_password())
        if tls.verify_peers:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(tls.ca_certificates))
        return ctx

    # --- handlers ----------------------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        """Access policy; rejections are audited with their reason (intervention by rejecting)."""
        assoc = event.assoc
        # At EVT_REQUESTED only the A-ASSOCIATE-RQ primitive is known.
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        address = assoc.requestor.address
        cfg = self.settings.scp
        reason, rejection = "", (0, 0, 0)
        if cfg.allowed_calling_aes and calling not in cfg.allowed_calling_aes:
            reason, rejection = f"calling AE {calling!r} is not allowed", (0x01, 0x01, 0x03)
        elif cfg.allowed_hosts and address not in cfg.allowed_hosts:
            reason, rejection = f"peer address {address} is not allowed", (0x01, 0x01, 0x01)
        elif (fill := self.spool.disk_fill()) >= self.settings.retention.refuse_above:
            reason = f"spool disk {fill:.0%} full (refusal level {self.settings.retention.refuse_above:.0%})"
            rejection = (0x02, 0x03, 0x01)
        if not reason:
            return
        LOGGER.warning("association from %s@%s rejected: %s", calling, address, reason)
        try:
            self.store.audit("association", "rejected", peer=f"{calling}@{address}", detail=reason)
        except STORE_OUTAGES as exc:
            LOGGER.error("cannot audit the rejection of %s@%s: %s", calling, address, _first_line(exc))
        if self.metrics:
            self.metrics.associations.labels("rejected").inc()
        assoc.acse.send_reject(*rejection)
        assoc.kill()  # as pynetdicom does after its own rejections: the A-ASSOCIATE-RJ goes out first

    def _on_accepted(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        peer = f"{req.ae_title.strip()}@{req.address}"
        refused = list(dict.fromkeys(_refused_context(cx) for cx in event.assoc.rejected_contexts))
        if refused:
            # Many SCUs propose every class they know; only a peer left with nothing to store is a warning.
            storing = any(cx.abstract_syntax != Verification for cx in event.assoc.accepted_contexts)
            shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "")
            (LOGGER.info if storing else LOGGER.warning)(
                "association from %s: %d presentation context(s) refused: %s", peer, len(refused), shown)
        try:
            self.store.audit("association", "accepted", peer=peer,
                             detail=("refused contexts: " + "; ".join(refused))[:500] if refused else "")
        except STORE_OUTAGES as exc:  # the association goes on: the instances are spooled, their rows wait
            LOGGER.error("cannot audit the association from %s: %s", peer, _first_line(exc))
        if self.metrics:
            self.metrics.associations.labels("accepted").inc()

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    # --- receiving into the spool ----------------------------------------------------------------
    def open_incoming(self, assoc: object) -> IncomingFile:
        """The file one data set of ``assoc`` is received into (called on its DUL thread)."""
        incoming = self.spool.open_incoming(self.settings.scp.max_instance_bytes)
        with self._incoming_lock:
            self._incoming[incoming.name] = (assoc, incoming)
        return incoming

    def _take_incoming(self, event: evt.Event) -> IncomingFile | None:
        with self._incoming_lock:
            entry = self._incoming.pop(str(event.dataset_path), None)
        return entry[1] if entry else None

    def _on_close(self, event: evt.Event) -> None:
        """An association that ended mid-message (aborted, connection lost) leaves nothing behind."""
        with self._incoming_lock:
            left = [name for name, (assoc, _) in self._incoming.items() if assoc is event.assoc]
            files = [self._incoming.pop(name)[1] for name in left]
        for incoming in files:
            incoming.discard()
        if files:
            LOGGER.warning("association from %s ended during a C-STORE: %d partly received data set(s) dropped",
                           event.assoc.requestor.ae_title.strip(), len(files))

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        incoming = self._take_incoming(event)
        if incoming is None:  # the association closed under us; nothing was received into the spool
            return self._refuse(calling, PROCESSING_FAILURE, "the data set was not received into the spool",
                                sop_uid, "")
        try:
            incoming.finish()  # fsync before anything is decided on it
            identifiers = phi.identifiers_in_file(incoming.path) if incoming.complete else ()
            with phi.identifiers_scope(identifiers):
                try:
                    return self._store(incoming, calling, sop_uid, str(event.context.abstract_syntax),
                                       retrieved=_moved_to_us(event, self.settings.scp.ae_title))
                except Exception as exc:  # noqa: BLE001 - a status, never a dropped association
                    LOGGER.exception("C-STORE from %s: handling %s failed", calling, phi.scrub(sop_uid))
                    return self._refuse(calling, PROCESSING_FAILURE, f"internal error: {type(exc).__name__}",
                                        sop_uid, "")
        finally:
            incoming.discard()  # a committed file was renamed away: nothing to delete then

    def _store(self, incoming: IncomingFile, calling: str, sop_uid: str, abstract_syntax: str,
               retrieved: bool = False) -> int | Dataset:
        cfg = self.settings.scp
        if incoming.over_limit:
            return self._refuse(
                calling, OUT_OF_RESOURCES,
                f"instance of {incoming.received} bytes is over scp.max_instance_bytes ({cfg.max_instance_bytes})",
                sop_uid, "", comment=f"instance over the size limit of {cfg.max_instance_bytes} bytes")
        if incoming.error is not None:
            if incoming.error.errno in (errno.ENOSPC, errno.EDQUOT):
                return self._refuse(calling, OUT_OF_RESOURCES, "spool disk full", sop_uid, "")
            return self._refuse(calling, OUT_OF_RESOURCES, f"cannot write to the spool: {incoming.error}", sop_uid, "")
        ds, status, reason = check_received(incoming.path, abstract_syntax, sop_uid)
        if ds is None:
            return self._refuse(calling, status, reason, sop_uid, "")
        study_uid = h.text(ds, "StudyInstanceUID")
        try:
            spooled = self.spool.commit(incoming, study_uid, sop_uid, cfg.max_study_bytes)
        except StudyFull as exc:
            return self._refuse(calling, OUT_OF_RESOURCES, f"{exc} (scp.max_study_bytes)", sop_uid, study_uid,
                                comment=f"study over its size limit of {cfg.max_study_bytes} bytes")
        except SpoolFull:
            return self._refuse(calling, OUT_OF_RESOURCES, "spool disk full", sop_uid, study_uid)
        except ValueError as exc:
            return self._refuse(calling, CANNOT_UNDERSTAND, str(exc), sop_uid, study_uid)
        except OSError as exc:
            return self._refuse(calling, OUT_OF_RESOURCES, f"cannot write to the spool: {exc}", sop_uid, study_uid)
        # The spooled file is the durable record; its row is written by the recorder thread in
        # batches (a crash before that is repaired by the start-up rescan of the spool).
        self.recorder.put(ds, str(spooled.path), spooled.size, calling, retrieved)
        if self.metrics:
            self.metrics.instances.inc()
            self.metrics.bytes.inc(spooled.size)
        return SUCCESS

    def _refuse(self, calling: str, status: int, reason: str, sop_uid: str, study_uid: str,
                comment: str | None = None) -> Dataset:
        """Log and audit a failed C-STORE; the response carries the reason (or ``comment``, when the
        reason would not fit) as Error Comment. Identifiers in scope are scrubbed from all three."""
        reason, sop_uid, study_uid = phi.scrub(reason), phi.scrub(sop_uid), phi.scrub(study_uid)
        log = LOGGER.error if status in (OUT_OF_RESOURCES, PROCESSING_FAILURE) else LOGGER.warning
        log("C-STORE from %s: %s refused, 0x%04X %s: %s", calling, sop_uid or "(no SOP Instance UID)", status,
            STATUS_NAMES[status], reason)
        try:
            self.store.audit("instance", "failure", peer=calling, study_instance_uid=study_uid[:64],
                             sop_instance_uid=sop_uid[:64],
                             detail=f"0x{status:04X} {STATUS_NAMES[status]}: {reason}"[:500])
        except Exception as exc:  # noqa: BLE001 - e.g. the job store's disk is full too: the status still goes back
            LOGGER.error("cannot audit the refusal of %s: %s", sop_uid, phi.scrub(str(exc)))
        response = Dataset()
        response.Status = status
        # Error Comment is LO: 64 characters of the default repertoire, no backslash (PS3.5 6.2).
        text = phi.scrub(comment) if comment else reason.removeprefix(f"instance {sop_uid}: ")
        response.ErrorComment = text.encode("ascii", "replace").decode().replace("\\", "/")[:64]
        return response

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every received instance has its row (tests, shutdown)."""
        self.recorder.flush(timeout)


#: Calling AE recorded for an instance the node retrieved itself (a C-MOVE sub-operation whose Move Originator
#: is our own AE title, or an ask's C-GET, node/ask.py): when the PACS later sends it for analysis, it counts
#: as new for the study's analysis then.
RETRIEVED = "retrieved"


def _moved_to_us(event: evt.Event, ae_title: str) -> bool:
    """Whether a C-STORE is a sub-operation of a C-MOVE the node asked for itself (PS3.7 9.1.1.1: Move
    Originator Application Entity Title is the AE that requested the C-MOVE)."""
    originator = getattr(event.request, "MoveOriginatorApplicationEntityTitle", None)
    if isinstance(originator, bytes):
        originator = originator.decode("ascii", "replace")
    return bool(originator) and str(originator).strip() == ae_title.strip()

#: Errors of a job store that cannot be written for now (disk full, I/O error, connection lost): retried.
STORE_OUTAGES = (OperationalError, DisconnectionError, OSError)


class Recorder:
    """Writes instance rows on its own thread, one transaction per batch.

    A batch gathers what arrives within ``window`` seconds of its first row (at most
    ``batch`` rows): with SQLite's synchronous=FULL every commit is an fsync, and one
    commit per instance would compete with the spool's own fsyncs for the disk while
    a study streams in. The spooled file, not the row, is the durable record (a crash
    before the commit is repaired by the start-up rescan), and each row carries the
    time the SCP received its instance, so the study's idle clock is not moved.

    When the job store cannot be written (:data:`STORE_OUTAGES`: its disk full, say), the
    batch is kept and tried again with backoff (``retry_initial`` doubling to ``retry_max``
    seconds), new rows joining it, until the store takes it: the rows appear when space
    returns, without a restart, with their receipt times. Past ``max_waiting`` rows only
    their files are kept (no header in memory) and ``rescan`` records them from the spool
    once the store is back. A batch failing for any other reason is recorded row by row,
    so one bad row holds up no other.
    """

    def __init__(self, store: Store, batch: int = 256, window: float = 0.25, retry_initial: float = 0.5,
                 retry_max: float = 10.0, max_waiting: int = 20_000,
                 rescan: Callable[[], int] | None = None) -> None:
        self.store = store
        self.batch = batch
        self.window = window
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_waiting = max_waiting
        self.rescan = rescan
        self._queue: queue.Queue = queue.Queue()
        #: Rows the store refused for now, oldest first (their queue items are not yet done).
        self._waiting: list[tuple] = []
        #: Rows dropped from ``_waiting`` beyond ``max_waiting``: the spool rescan records them.
        self._dropped = 0
        self._outage = ""
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Spooled instances whose rows wait for the job store."""
        return len(self._waiting) + self._dropped

    def put(self, ds, path: str, size: int, calling: str, retrieved: bool = False) -> None:
        # Stamped now: a study's idle clock runs from receipt, not from when its row is written.
        self._queue.put((ds, path, size, calling, utcnow(), retrieved))

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _gather(self, timeout: float | None) -> list[tuple]:
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        closes = time.monotonic() + self.window
        while len(items) < self.batch:
            left = closes - time.monotonic()
            if left <= 0:
                break
            try:
                items.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            items = self._gather(delay if self.waiting else None)
            batch = self._waiting + items
            done = self._record(batch)
            for _ in done:
                self._queue.task_done()
            if len(done) == len(batch):
                if self.waiting:
                    self._store_back()
                delay = self.retry_initial
                continue
            if not self.waiting:
                LOGGER.error("the job store cannot be written (%s): %d spooled instance(s) wait for their rows, "
                             "tried again every %.1f to %.0f s (no restart needed)", self._outage,
                             len(batch) - len(done), self.retry_initial, self.retry_max)
            recorded = {id(item) for item in done}
            self._waiting = [item for item in batch if id(item) not in recorded]
            while len(self._waiting) > self.max_waiting:
                self._waiting.pop(0)
                self._queue.task_done()  # its file stays in the spool; the rescan records it
                self._dropped += 1
            delay = min(delay * 2, self.retry_max)

    def _record(self, batch: list[tuple]) -> list[tuple]:
        """Record ``batch``; returns the items dealt with (recorded, or given up on as bad)."""
        if not batch:
            return []
        try:
            record_instances(self.store, batch)
            return batch
        except STORE_OUTAGES as exc:
            self._outage = _first_line(exc)
            return []
        except Exception:  # noqa: BLE001 - not an outage: find the bad row(s), record the rest
            done = []
            for item in batch:
                try:
                    record_instances(self.store, [item])
                except STORE_OUTAGES as exc:
                    self._outage = _first_line(exc)
                    return done
                except Exception as exc:  # noqa: BLE001 - its file stays spooled; the start-up rescan tries again
                    with phi.identifiers_scope(phi.identifiers_in(item[0])):
                        LOGGER.error("recording the instance in %s failed: %s: %s", item[1], type(exc).__name__,
                                     phi.scrub(str(exc)))
                done.append(item)
            return done

    def _store_back(self) -> None:
        waited = len(self._waiting)
        self._waiting = []
        if self._dropped and self.rescan is not None:
            try:
                waited += self.rescan()
                self._dropped = 0
            except Exception:  # noqa: BLE001 - the start-up rescan is the last resort
                LOGGER.exception("recording the spooled instances that waited failed")
                return
        self._dropped = 0
        LOGGER.warning("the job store can be written again: recorded %d spooled instance(s) that waited for it",
                       waited)


def record_spooled_files(store: Store, spool: Spool, calling: str = "recovered") -> int:
    """Record every spooled file that has no row (after a crash, or rows a job-store outage dropped).

    Returns how many were recorded; a file that cannot be read is left in place and logged.
    """
    with store.session() as s:
        known = set(s.scalars(select(Instance.path)))
    recorded = 0
    for path in spool.root.rglob("*.dcm"):
        if str(path) in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            size = path.stat().st_size
        except Exception as exc:  # noqa: BLE001 - a foreign file in the spool: leave it, say so
            LOGGER.error("spool file %s cannot be recorded: %s", path,
                         phi.scrub(f"{type(exc).__name__}: {exc}", phi.identifiers_in_file(path)))
            continue
        record_instance(store, ds, str(path), size, calling)
        recorded += 1
    return recorded


def _first_line(exc: BaseException) -> str:
    """An exception as one scrubbed line (SQLAlchemy appends the statement and its parameters)."""
    return phi.scrub(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def record_instance(store: Store, ds, path: str, size: int, calling: str, is_prior: bool = False) -> bool:
    """Record one spooled instance (see :func:`record_instances`); True if it was new."""
    return record_instances(store, [(ds, path, size, calling)], is_prior)[0]


def record_instances(store: Store, items: list[tuple], is_prior: bool = False) -> list[bool]:
    """Add (or refresh) the rows of spooled instances ``(ds, path, size, calling[, received_at])``
    in one transaction (``received_at`` defaults to now).

    A new instance in a study whose job already ran reopens the study: the next job
    version's results replace the earlier ones. Returns, per item, whether it was new.
    The batch's studies and instances are looked up in two queries and written in one
    flush (a per-row query and flush cost about 1.5 ms of CPU each, taken from the
    receiving threads under the GIL).
    """
    with store.session() as s, s.no_autoflush:
        study_uids = {str(ds.StudyInstanceUID) for ds, *_ in items}
        sop_uids = {str(ds.SOPInstanceUID) for ds, *_ in items}
        studies = {st.study_instance_uid: st
                   for st in s.scalars(select(Study).where(Study.study_instance_uid.in_(study_uids)))}
        instances = {inst.sop_instance_uid: inst
                     for inst in s.scalars(select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))}
        created = False
        for ds, _path, _size, calling, *stamp in items:
            uid = str(ds.StudyInstanceUID)
            if uid not in studies:
                studies[uid] = Study(study_instance_uid=uid, patient_ref=hash_phi(str(ds.get("PatientID", ""))),
                                     calling_ae=calling, is_prior=is_prior,
                                     first_received=stamp[0] if stamp else utcnow())
                s.add(studies[uid])
                created = True
        if created:
            s.flush()  # their ids, for the instances' foreign keys
        return [_record_one(store, s, studies, instances, *item, is_prior=is_prior) for item in items]


def _record_one(store: Store, s, studies: dict[str, Study], instances: dict[str, Instance], ds, path: str,
                size: int, calling: str, received_at: datetime | None = None, retrieved: bool = False,
                is_prior: bool = False) -> bool:
    study_uid = str(ds.StudyInstanceUID)
    sop_uid = str(ds.SOPInstanceUID)
    now = received_at or utcnow()
    study = studies[study_uid]
    instance = instances.get(sop_uid)
    new = instance is None
    if new:
        instance = Instance(
            study_id=study.id, sop_instance_uid=sop_uid, sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")), modality=str(ds.get("Modality", ""))[:16],
            body_part=str(ds.get("BodyPartExamined", ""))[:64],
            study_description=str(ds.get("StudyDescription", ""))[:128], calling_ae=calling,
            path=path, size=size, received_at=now,
        )
        s.add(instance)
        instances[sop_uid] = instance  # a second copy in the same batch is a duplicate
        # Maybe a reader's annotation (SR, GSPS): it starts an ask job (node/ask.py), never a re-analysis.
        annotation = instance.sop_class_uid in ANNOTATION_CLASSES
        if annotation:
            instance.annotation = "new"
        elif retrieved:  # a C-MOVE the node asked for itself (a prior, an ask's image): no analysis for it
            instance.calling_ae = RETRIEVED
        else:
            study.pending_instances += 1
        if study.state in (StudyState.DONE, StudyState.QUEUED) and not (is_prior or annotation or retrieved):
            # Reopened: a new job version will follow.
            move_study_state(study, StudyState.RECEIVING, reason="new instance")
    else:
        instance.received_at = now
        if instance.calling_ae == RETRIEVED and not (is_prior or retrieved):
            # Fetched earlier by the node itself (a prior, an ask's image), sent for analysis now.
            instance.calling_ae = calling[:16]
            study.pending_instances += 1
            if study.state in (StudyState.DONE, StudyState.QUEUED):
                move_study_state(study, StudyState.RECEIVING, reason="sent for analysis")
    if not (is_prior or retrieved) and instance.annotation is None:
        study.last_received = now
    store.audit("instance", "success", session=s, peer=calling, study_instance_uid=study_uid,
                sop_instance_uid=sop_uid, detail="new" if new else "duplicate (idempotent)")
    return new
