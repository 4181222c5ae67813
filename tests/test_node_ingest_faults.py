"""Receiving with a real ``medversa serve`` and dcmtk's storescu: hostile data sets whose patient
identifiers end up in exception texts and library warnings, and a job store whose disk fills up
while instances keep arriving."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from sqlalchemy import select

from medversa.benchmarks.peers import free_port, wait_port
from medversa.node.job_store import AuditEvent, Instance, Job, JobState, Store, Study

from . import dicom_factory as f
from .node_process import kill_group, mount_tmpfs, node_config, start_serve, statuses, storescu, unmount, wait_for
from .reliability import record_case

#: A patient the hostile files name: none of these strings may reach the log.
HOSTILE_NAME = "Zqxname^Hostilewarden"
HOSTILE_ID = "PID-8675309-LEAK"
TRACES = ("Zqxname", "Hostilewarden", HOSTILE_ID, "8675309")

ROUTING = [{"name": "chest radiograph", "modality": "CR|DX", "body_part": "CHEST|",
            "tasks": ["chest_pathology_classification"]}]


def _hostile(folder: Path) -> list[Path]:
    """Two data sets whose refusal reasons quote the patient: Study Instance UID holding the patient's
    name (a ValueError from the spool, a pydicom warning on reading), and Number of Frames holding the
    Patient ID (a PixelDataError, a pydicom warning). Both must be refused 0xC000."""
    by_name = f.make_cr(32, 32, PatientName=HOSTILE_NAME, PatientID=HOSTILE_ID)
    by_name.StudyInstanceUID = HOSTILE_NAME
    by_id = f.make_cr(32, 32, PatientName=HOSTILE_NAME, PatientID=HOSTILE_ID)
    value = HOSTILE_ID.encode()
    by_id[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(value), value, 0, False, True)
    return f.write_datasets([by_name, by_id], folder)


def _health(config: Path) -> dict:
    """The node's /healthz report (its HTTP port is in the test configuration)."""
    port = yaml.safe_load(config.read_text())["http"]["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as unhealthy:  # 503 carries the report too
        return json.loads(unhealthy.read())


def test_patient_identifiers_in_exception_texts_never_reach_the_log(tmp_path):
    """The reasons (exception texts) and pydicom's own warnings quote the hostile values; the log line
    still names the instance, the status and the reason, with each identifier as its keyed hash, and
    neither the log nor the audit trail holds any trace of the name or the ID."""
    port = free_port()
    log = tmp_path / "serve.log"
    node = start_serve(node_config(tmp_path, port, routing=ROUTING, idle_seconds=3600), log)
    try:
        wait_port(port, 90)
        paths = _hostile(tmp_path / "hostile")
        sent = storescu(port, *paths, options=("--no-halt",))
        assert statuses(sent) == [0xC000, 0xC000], sent.stdout[-3000:]
        good = f.write_datasets([f.make_cr(32, 32)], tmp_path / "good")
        assert statuses(storescu(port, *good)) == [0]
        time.sleep(1.0)  # let the log lines of the refusals be written
    finally:
        kill_group(node, signal.SIGTERM)
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    for uid, why in zip(uids, ("is not a valid UID", "a positive integer is required"), strict=False):
        assert any(uid in line and "refused, 0xC000" in line and why in line and "[patient identifier " in line
                   for line in lines), text[-4000:]
    assert "Invalid value for VR" in text  # pydicom's warnings were logged, scrubbed
    leaked = [t for t in TRACES if t.lower() in text.lower()]
    assert not leaked, f"{leaked} in the log:\n" + "\n".join(line for line in lines if any(
        t.lower() in line.lower() for t in leaked))
    store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")
    with store.session() as s:
        details = " ".join(a.detail + a.sop_instance_uid + a.study_instance_uid for a in s.scalars(select(AuditEvent)))
    assert "is not a valid UID" in details and not [t for t in TRACES if t.lower() in details.lower()]
    record_case("security", "hostile data sets quoting the patient in exception texts and pydicom warnings",
                "refused 0xC000 with the reason logged; name and ID only as keyed hashes in log and audit trail",
                instances_sent=3, acknowledged=1, refused=2, lost=0, status="0xC000")


def test_instances_received_while_the_job_store_disk_is_full_get_their_rows_when_space_returns(tmp_path):
    """The job store (SQLite) on its own 1 MiB disk, filled up; the spool has room. Instances keep
    arriving and are acknowledged (0x0000: each is durably spooled, the file is the record); their
    rows wait in the recorder. Space returns: every row is written without a restart, and the
    study is processed."""
    db_dir = tmp_path / "db"
    mount_tmpfs(db_dir, "1m")
    node = None
    try:
        port = free_port()
        database = db_dir / "medversa.db"
        config = node_config(tmp_path, port, routing=ROUTING, idle_seconds=2,
                             database_url=f"sqlite:///{database}")
        log = tmp_path / "serve.log"
        node = start_serve(config, log)
        wait_port(port, 90)
        warm = f.write_datasets([f.make_cr(32, 32)], tmp_path / "warm")
        assert statuses(storescu(port, *warm)) == [0]
        store = Store(f"sqlite:///{database}")

        def recorded() -> set[str]:
            with store.session() as s:
                return set(s.scalars(select(Instance.sop_instance_uid)))

        wait_for(lambda: recorded() == {warm[0].stem}, 30, "the first instance was not recorded", log)
        filler = db_dir / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # every free block of the job store's disk
            while os.write(fd, bytes(4096)):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        study = pydicom.uid.generate_uid()
        paths = f.write_datasets([f.make_cr(96, 96, study_uid=study, instance_number=i) for i in range(1, 41)],
                                 tmp_path / "in")
        got = statuses(storescu(port, *paths, options=("--no-halt",)))
        assert got == [0] * len(paths), got
        wait_for(lambda: "the job store cannot be written" in log.read_text(), 30,
                 "the recorder never met the full disk", log)
        time.sleep(3)  # longer than the idle time: nothing may be decided on rows that are not there
        missing = {p.stem for p in paths} - recorded()
        assert missing, "every row was written although the job store's disk was full"
        health = _health(config)
        assert health["rows_waiting"] == len(missing) and health["ok"] is False, health
        spooled = {p.stem for p in (tmp_path / "node" / "spool" / study).glob("*.dcm")}
        assert spooled == {p.stem for p in paths}  # acknowledged = durably spooled

        filler.unlink()  # space returns; the node is not restarted
        wait_for(lambda: {p.stem for p in paths} <= recorded(), 60, "rows not written after space returned", log)
        assert "the job store can be written again: recorded" in log.read_text()
        assert _health(config)["rows_waiting"] == 0

        def study_done() -> bool:
            with store.session() as s:
                job = s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study)
                                .order_by(Job.version.desc())).first()
                return job is not None and job.state is JobState.DONE

        wait_for(study_done, 240, "the study whose rows waited was not processed", log)
        with store.session() as s:
            versions = s.scalars(select(Job.version).join(Study).where(Study.study_instance_uid == study)).all()
        if len(missing) == len(paths):  # every row waited: they came back in one batch, so one job
            assert versions == [1], versions
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        if node is not None:
            kill_group(node, signal.SIGTERM)
        unmount(db_dir)
    record_case("fault", "job store disk full (1 MiB tmpfs under SQLite) while 40 instances arrive",
                "all acknowledged 0x0000 (spooled); rows written when space returned, without a restart; "
                "study processed once", instances_sent=len(paths) + 1, acknowledged=len(paths) + 1,
                rows_waiting=len(missing), processed=len(paths), lost=0, status="0x0000")


def test_identifiers_are_found_and_scrubbed_even_in_a_file_pydicom_cannot_read(tmp_path):
    """A file whose File Meta Information says Deflated while its data set is not (pydicom fails in
    zlib) still yields its patient's name and ID from the bytes, explicit and implicit VR alike,
    and a text quoting them is scrubbed."""
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    from medversa.node import phi

    for implicit in (False, True):
        ds = f.make_cr(16, 16, PatientName=HOSTILE_NAME, PatientID=HOSTILE_ID)
        meta = ds.file_meta
        meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        head = BytesIO()
        head.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(head, meta)
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, implicit
        del ds.file_meta
        write_dataset(body, ds)
        path = tmp_path / f"broken-{implicit}.dcm"
        path.write_bytes(head.getvalue() + body.getvalue())
        with pytest.raises(Exception):  # noqa: B017 - any parse failure: the point is that there is one
            pydicom.dcmread(path)
        found = phi.identifiers_in_file(path)
        assert HOSTILE_NAME in found and HOSTILE_ID in found and "Hostilewarden" in found, found
        text = phi.scrub(f"cannot parse: value '{HOSTILE_NAME.upper()}' near {HOSTILE_ID}", found)
        assert not [t for t in TRACES if t.lower() in text.lower()] and "[patient identifier " in text, text
