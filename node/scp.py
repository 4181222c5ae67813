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
ever allocated from header dimensions); 0xC001 when recording fails.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from datetime import datetime
from io import BytesIO

from medversa.dicom_mapping import header as h
from medversa.dicom_mapping.pixels import PixelDataError, check_pixel_data
from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from .config import NodeSettings
from .dicom_classes import ACCEPTED_SYNTAXES, STORAGE_CLASSES
from .phi import pseudonym
from .spool import Spool, SpoolFull
from .store import Instance, Store, Study, StudyState, utcnow

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


def check_received(data: bytes, abstract_syntax: str, affected_sop_uid: str) -> tuple[Dataset | None, int, str]:
    """Parse a received data set and decide on it; never raises (every failure is a status).

    Returns the attributes the recorder needs (None when refused), the status and the reason.
    """
    try:
        full = dcmread(BytesIO(data))
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
        self.recorder = Recorder(store)
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
        self.ae = ae

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.settings.scp
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
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
        self.store.audit("association", "rejected", peer=f"{calling}@{address}", detail=reason)
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
        self.store.audit("association", "accepted", peer=peer,
                         detail=("refused contexts: " + "; ".join(refused))[:500] if refused else "")
        if self.metrics:
            self.metrics.associations.labels("accepted").inc()

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        data = event.encoded_dataset()
        ds, status, reason = check_received(data, str(event.context.abstract_syntax), sop_uid)
        if ds is None:
            return self._refuse(calling, status, reason, sop_uid, "")
        study_uid = h.text(ds, "StudyInstanceUID")
        try:
            spooled = self.spool.write(study_uid, sop_uid, data)
        except SpoolFull:
            return self._refuse(calling, OUT_OF_RESOURCES, "spool disk full", sop_uid, study_uid)
        except ValueError as exc:
            return self._refuse(calling, CANNOT_UNDERSTAND, str(exc), sop_uid, study_uid)
        except OSError as exc:
            return self._refuse(calling, OUT_OF_RESOURCES, f"cannot write to the spool: {exc}", sop_uid, study_uid)
        # The spooled file is the durable record; its row is written by the recorder thread in
        # batches (a crash before that is repaired by the start-up rescan of the spool).
        self.recorder.put(ds, str(spooled.path), spooled.size, calling)
        if self.metrics:
            self.metrics.instances.inc()
            self.metrics.bytes.inc(spooled.size)
        return SUCCESS

    def _refuse(self, calling: str, status: int, reason: str, sop_uid: str, study_uid: str) -> Dataset:
        """Log and audit a failed C-STORE; the response carries the reason as Error Comment."""
        log = LOGGER.error if status == OUT_OF_RESOURCES else LOGGER.warning
        log("C-STORE from %s: %s refused, 0x%04X %s: %s", calling, sop_uid or "(no SOP Instance UID)", status,
            STATUS_NAMES[status], reason)
        try:
            self.store.audit("instance", "failure", peer=calling, study_instance_uid=study_uid[:64],
                             sop_instance_uid=sop_uid[:64],
                             detail=f"0x{status:04X} {STATUS_NAMES[status]}: {reason}"[:500])
        except Exception as exc:  # noqa: BLE001 - e.g. the job store's disk is full too: the status still goes back
            LOGGER.error("cannot audit the refusal of %s: %s", sop_uid, exc)
        response = Dataset()
        response.Status = status
        # Error Comment is LO: 64 characters of the default repertoire, no backslash (PS3.5 6.2).
        comment = reason.removeprefix(f"instance {sop_uid}: ")
        response.ErrorComment = comment.encode("ascii", "replace").decode().replace("\\", "/")[:64]
        return response

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every received instance has its row (tests, shutdown)."""
        self.recorder.flush(timeout)


class Recorder:
    """Writes instance rows on its own thread, one transaction per batch.

    A batch gathers what arrives within ``window`` seconds of its first row (at most
    ``batch`` rows): with SQLite's synchronous=FULL every commit is an fsync, and one
    commit per instance would compete with the spool's own fsyncs for the disk while
    a study streams in. The spooled file, not the row, is the durable record (a crash
    before the commit is repaired by the start-up rescan), and each row carries the
    time the SCP received its instance, so the study's idle clock is not moved.
    """

    def __init__(self, store: Store, batch: int = 256, window: float = 0.25) -> None:
        self.store = store
        self.batch = batch
        self.window = window
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def put(self, ds, path: str, size: int, calling: str) -> None:
        # Stamped now: a study's idle clock runs from receipt, not from when its row is written.
        self._queue.put((ds, path, size, calling, utcnow()))

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _gather(self) -> list[tuple]:
        items = [self._queue.get()]
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
        while True:
            items = self._gather()
            try:
                record_instances(self.store, items)
            except Exception:  # noqa: BLE001 - the files are spooled; the start-up rescan records them
                LOGGER.exception("recording %d instance(s) failed", len(items))
            finally:
                for _ in items:
                    self._queue.task_done()


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
                size: int, calling: str, received_at: datetime | None = None, is_prior: bool = False) -> bool:
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
        study.pending_instances += 1
        if study.state in (StudyState.DONE, StudyState.QUEUED) and not is_prior:
            study.state = StudyState.RECEIVING  # reopened: a new job version will follow
    else:
        instance.received_at = now
    if not is_prior:
        study.last_received = now
    store.audit("instance", "success", session=s, peer=calling, study_instance_uid=study_uid,
                sop_instance_uid=sop_uid, detail="new" if new else "duplicate (idempotent)")
    return new
