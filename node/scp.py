"""Our Storage and Verification SCP (pynetdicom), with thin handlers bound as functions.

Association policy (PS3.8 7.1.1.9 A-ASSOCIATE-RJ): a calling AE title outside the
allow-list is rejected permanently by the service user with reason 3 (calling AE
title not recognised); a peer address outside the allow-list with reason 1 (no
reason given); when the spool's disk passes the refusal level, transiently by the
service provider (presentation) with reason 1 (temporary congestion). Every
association, rejection and received instance is audited.

C-STORE statuses (PS3.4 B.2.3): 0x0000 Success after the instance is durably
spooled and recorded; 0xA700 Out of Resources when the disk is full; 0xA900 when
the data set does not match the SOP class; 0xC000 (Cannot understand) when the data
set cannot be parsed or lacks its identifying UIDs; 0xC001 when recording fails.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from io import BytesIO

from pydicom import dcmread
from pynetdicom import AE, evt
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
        self.store.audit("association", "accepted", peer=f"{req.ae_title.strip()}@{req.address}")
        if self.metrics:
            self.metrics.associations.labels("accepted").inc()

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            data = event.encoded_dataset()
            ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=HEADER_TAGS)
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
            if "SeriesInstanceUID" not in ds:
                raise ValueError("no SeriesInstanceUID")
        except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's malformed data
            LOGGER.warning("C-STORE from %s: cannot parse the data set: %s", calling, exc)
            self.store.audit("instance", "failure", peer=calling, detail=f"cannot understand: {exc}"[:500])
            return CANNOT_UNDERSTAND
        if sop_class != event.context.abstract_syntax or sop_uid != event.request.AffectedSOPInstanceUID:
            LOGGER.warning("C-STORE from %s: data set %s does not match the request", calling, sop_uid)
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        try:
            spooled = self.spool.write(study_uid, sop_uid, data)
        except SpoolFull:
            LOGGER.error("C-STORE from %s: spool disk full; %s refused (0xA700)", calling, sop_uid)
            self.store.audit("instance", "failure", peer=calling, study_instance_uid=study_uid,
                             sop_instance_uid=sop_uid, detail="out of resources: disk full")
            return OUT_OF_RESOURCES
        except ValueError as exc:
            LOGGER.warning("C-STORE from %s: %s", calling, exc)
            return CANNOT_UNDERSTAND
        except OSError as exc:
            LOGGER.error("C-STORE from %s: cannot spool %s: %s", calling, sop_uid, exc)
            return OUT_OF_RESOURCES
        # The spooled file is the durable record; its row is written by the recorder thread in
        # batches (a crash before that is repaired by the start-up rescan of the spool).
        self.recorder.put(ds, str(spooled.path), spooled.size, calling)
        if self.metrics:
            self.metrics.instances.inc()
            self.metrics.bytes.inc(spooled.size)
        return SUCCESS

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every received instance has its row (tests, shutdown)."""
        self.recorder.flush(timeout)


class Recorder:
    """Writes instance rows in batches on its own thread, one transaction per batch."""

    def __init__(self, store: Store, batch: int = 64) -> None:
        self.store = store
        self.batch = batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def put(self, ds, path: str, size: int, calling: str) -> None:
        self._queue.put((ds, path, size, calling))

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
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
    """Add (or refresh) the rows of spooled instances ``(ds, path, size, calling)`` in one transaction.

    A new instance in a study whose job already ran reopens the study: the next job
    version's results replace the earlier ones. Returns, per item, whether it was new.
    """
    with store.session() as s:
        return [_record_one(store, s, *item, is_prior=is_prior) for item in items]


def _record_one(store: Store, s, ds, path: str, size: int, calling: str, is_prior: bool = False) -> bool:
    study_uid = str(ds.StudyInstanceUID)
    sop_uid = str(ds.SOPInstanceUID)
    now = utcnow()
    study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        study = Study(study_instance_uid=study_uid, patient_ref=hash_phi(str(ds.get("PatientID", ""))),
                      calling_ae=calling, is_prior=is_prior, first_received=now)
        s.add(study)
        s.flush()
    instance = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).first()
    new = instance is None
    if new:
        s.add(Instance(
            study_id=study.id, sop_instance_uid=sop_uid, sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")), modality=str(ds.get("Modality", ""))[:16],
            body_part=str(ds.get("BodyPartExamined", ""))[:64],
            study_description=str(ds.get("StudyDescription", ""))[:128], calling_ae=calling,
            path=path, size=size, received_at=now,
        ))
        study.pending_instances += 1
        if study.state in (StudyState.DONE, StudyState.QUEUED) and not is_prior:
            study.state = StudyState.RECEIVING  # reopened: a new job version will follow
    else:
        instance.received_at = now
    if not is_prior:
        study.last_received = now
    store.audit("instance", "success", session=s, peer=calling, study_instance_uid=study_uid,
                sop_instance_uid=sop_uid, detail="new" if new else "duplicate (idempotent)")
    s.flush()
    return new
