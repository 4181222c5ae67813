"""Faults with real processes: the node's own ``serve`` killed mid-stream, its worker killed mid-job,
the PACS down during export, Redis down, the spool's disk full, a prior fetch that finds nothing or
gets no answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pydicom
import pytest
import yaml
from pynetdicom import AE
from sqlalchemy import select

from medversa.benchmarks.peers import wait_port
from medversa.node.job_store import Instance, Job, JobState, Store, Study

from . import dicom_factory as f
from .node_process import kill_group as _kill_group
from .node_process import mount_tmpfs, statuses, storescu, unmount, wait_for
from .node_process import node_config as _config
from .node_process import start_serve as _serve
from .orthanc import free_port
from .reliability import record_case


def test_serve_killed_during_a_stream_loses_no_acknowledged_instance(tmp_path):
    port = free_port()
    config = _config(tmp_path, port, idle_seconds=3600)
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    datasets = [f.make_cr(256, 256, study_uid=pydicom.uid.generate_uid()) for _ in range(60)]
    acknowledged: list[str] = []
    attempted = 0
    try:
        wait_port(port, 90)
        ae = AE("PACS")
        ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        assert assoc.is_established
        for i, ds in enumerate(datasets):
            if i == 25:
                _kill_group(node)  # SIGKILL to serve and its worker, mid-association
            attempted += 1
            try:
                status = assoc.send_c_store(ds)
            except Exception:  # noqa: BLE001 - the peer is gone
                break
            if status and status.Status == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                break
        assoc.abort()
    finally:
        _kill_group(node)
    assert 20 <= len(acknowledged) <= 26
    spool = tmp_path / "node" / "spool"
    node = _serve(config, log)  # restart: start-up recovery
    try:
        wait_port(port, 90)
        store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")
        deadline = time.time() + 30
        while time.time() < deadline:
            with store.session() as s:
                recorded = set(s.scalars(select(Instance.sop_instance_uid)))
            if set(acknowledged) <= recorded:
                break
            time.sleep(0.5)
        assert set(acknowledged) <= recorded, "an acknowledged instance was lost"
        assert not list(spool.rglob("*.partial"))
        for path in spool.rglob("*.dcm"):
            pydicom.dcmread(path)  # every spooled file is complete
    finally:
        _kill_group(node, signal.SIGTERM)
    record_case("fault", "serve SIGKILLed during a C-STORE stream, then restarted",
                "every acknowledged instance recorded after restart; no partial file",
                instances_sent=attempted, acknowledged=len(acknowledged), lost=0)


def test_worker_killed_mid_job_the_job_completes_after_restart(tmp_path):
    from .orthanc import OrthancServer

    orthanc = OrthancServer(tmp_path / "orthanc").start()
    port = free_port()
    config = _config(tmp_path, port, export={"destinations": [str(orthanc.peer)]})
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    store_path = tmp_path / "node" / "medversa.db"
    try:
        wait_port(port, 90)
        study_uid = pydicom.uid.generate_uid()
        study = [f.make_cr(128, 128, study_uid=study_uid) for _ in range(2)]
        ae = AE("PACS")
        ae.add_requested_context(study[0].SOPClassUID, study[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        for ds in study:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        store = Store(f"sqlite:///{store_path}")

        def job_state():
            with store.session() as s:
                job = s.scalars(select(Job)).first()
                return job.state if job else None

        deadline = time.time() + 120
        while job_state() is not JobState.RUNNING and time.time() < deadline:
            time.sleep(0.05)
        assert job_state() is JobState.RUNNING, log.read_text()[-3000:]
        worker = subprocess.run(["pgrep", "-f", "medversa.cli worker"], capture_output=True, text=True)
        pids = [int(p) for p in worker.stdout.split() if int(p) != os.getpid()]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 240
        while job_state() not in (JobState.DONE, JobState.EXPORTING) and time.time() < deadline:
            time.sleep(0.5)
        assert job_state() in (JobState.DONE, JobState.EXPORTING), log.read_text()[-4000:]
        results = list((tmp_path / "node" / "results").rglob("SR_*.dcm"))
        assert len(results) == 1  # re-run wrote the same object, not a second one
        written = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                   for p in (tmp_path / "node" / "results").rglob("*.dcm")}
        deadline = time.time() + 120
        while time.time() < deadline:
            with store.session() as s:
                if s.scalars(select(Job)).first().state is JobState.DONE:
                    break
            time.sleep(0.5)
        in_pacs = orthanc.request("POST", "/tools/find", {"Level": "Instance", "Expand": True, "Query": {
            "StudyInstanceUID": study_uid}})
        results_in_pacs = ({i["MainDicomTags"]["SOPInstanceUID"] for i in in_pacs}
                           - {str(d.SOPInstanceUID) for d in study})
        sr_series = orthanc.request("POST", "/tools/find", {"Level": "Series", "Expand": True, "Query": {
            "StudyInstanceUID": study_uid, "Modality": "SR"}})
        srs = [i for series in sr_series for i in series["Instances"]
               if "report text" not in series["MainDicomTags"].get("SeriesDescription", "")]  # not its text copy
        # Results reached the PACS once: exactly the objects written, one SR, no copies under new UIDs.
        assert len(srs) == 1 and results_in_pacs == written, (len(srs), results_in_pacs ^ written)
    finally:
        _kill_group(node, signal.SIGTERM)
        orthanc.stop(kill=True)
    record_case("fault", "worker SIGKILLed mid-job", "job re-queued and completed once; its results reach the "
                "PACS once (one SR, the same UIDs)", instances_sent=2, acknowledged=2, processed=2, lost=0,
                result_objects_in_pacs=len(written))


def test_pacs_down_during_export_retries_then_dead_letters_and_retry_sends(tmp_path):
    from sqlalchemy import func

    from medversa.node.job_store import Export, ExportState

    from .orthanc import OrthancServer

    orthanc = OrthancServer(tmp_path / "orthanc").start()
    port = free_port()
    config = _config(tmp_path, port, export={"destinations": [str(orthanc.peer)], "max_attempts": 3,
                                             "backoff_initial_s": 1.0, "backoff_max_s": 2.0})
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")

    def exports(state):
        with store.session() as s:
            return s.scalar(select(func.count()).select_from(Export).where(Export.state == state)) or 0

    def tried_pending() -> int:
        with store.session() as s:
            return s.scalar(select(func.count()).select_from(Export).where(
                Export.state == ExportState.PENDING, Export.attempts >= 1)) or 0

    def send_study() -> str:
        uid = pydicom.uid.generate_uid()
        ae = AE("PACS")
        ds = f.make_cr(96, 96, study_uid=uid)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        return uid

    try:
        wait_port(port, 90)
        orthanc.stop(kill=True)
        first = send_study()
        # A row is PENDING with 0 attempts from its creation until its first try is recorded: wait for the try.
        wait_for(lambda: tried_pending() >= 1, 180, "no tried pending export while the PACS is down", log)
        with store.session() as s:
            assert s.scalars(select(Export)).first().attempts >= 1
        orthanc.start()  # back, on the same port: the backoff retry delivers
        wait_for(lambda: exports(ExportState.PENDING) == 0 and exports(ExportState.DELIVERED) >= 1, 120,
                 "exports not delivered after the PACS returned", log)
        assert orthanc.request("POST", "/tools/find",
                               {"Level": "Series", "Query": {"StudyInstanceUID": first, "Modality": "SR"}})

        orthanc.stop(kill=True)
        second = send_study()
        wait_for(lambda: exports(ExportState.DEAD) >= 1, 240, "no dead-letter after the tries ran out", log)
        with store.session() as s:
            job_id = s.scalars(select(Export).where(Export.state == ExportState.DEAD)).first().job_id
        orthanc.start()
        retried = subprocess.run([sys.executable, "-m", "medversa.cli", "retry", str(job_id), "--config", str(config)],
                                 capture_output=True, text=True, timeout=120)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert exports(ExportState.DEAD) == 0
        assert orthanc.request("POST", "/tools/find",
                               {"Level": "Series", "Query": {"StudyInstanceUID": second, "Modality": "SR"}})
    finally:
        _kill_group(node, signal.SIGTERM)
        orthanc.stop(kill=True)
    record_case("fault", "PACS (Orthanc) down during export",
                "retried with backoff and delivered on return; dead-lettered after 3 tries; medversa retry delivered",
                instances_sent=2, acknowledged=2, processed=2, lost=0)


def test_redis_down_the_scp_keeps_spooling_and_jobs_queue_when_it_returns(tmp_path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis_port = free_port()

    def start_redis() -> subprocess.Popen:
        return subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    redis = start_redis()
    port = free_port()
    config = _config(tmp_path, port, broker_url=f"redis://127.0.0.1:{redis_port}/0")
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    worker = subprocess.Popen([sys.executable, "-m", "medversa.cli", "worker", "--config", str(config)],
                              stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")
    try:
        wait_port(port, 90)
        redis.terminate()
        redis.wait(10)
        uid = pydicom.uid.generate_uid()
        ds = f.make_cr(96, 96, study_uid=uid)
        ae = AE("PACS")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        assert assoc.is_established and assoc.send_c_store(ds).Status == 0  # still accepting
        assoc.release()

        def state():
            with store.session() as s:
                job = s.scalars(select(Job)).first()
                return job.state if job else None

        deadline = time.time() + 60
        while state() is None and time.time() < deadline:
            time.sleep(0.3)
        time.sleep(3)
        assert state() is JobState.RECEIVED  # created, not queued: the broker is down
        redis = start_redis()
        deadline = time.time() + 240
        while state() not in (JobState.DONE, JobState.EXPORTING) and time.time() < deadline:
            time.sleep(0.5)
        assert state() in (JobState.DONE, JobState.EXPORTING), (log.read_text()[-2000:],
                                                               (tmp_path / "worker.log").read_text()[-2000:])
    finally:
        _kill_group(worker, signal.SIGTERM)
        _kill_group(node, signal.SIGTERM)
        redis.terminate()
        redis.wait(10)
    record_case("fault", "Redis broker down while a study arrives", "instance acknowledged; job queued and run "
                "when Redis returned", instances_sent=1, acknowledged=1, processed=1, lost=0)


def test_a_full_spool_disk_answers_out_of_resources_leaves_nothing_half_written_and_resumes(tmp_path):
    """The C-STORE path meets a real ENOSPC: 0xA700 for what does not fit, every acknowledged instance
    complete on disk, and receiving resumes (0x0000) once space is freed."""
    spool = tmp_path / "node" / "spool"
    mount_tmpfs(spool, "8m")
    node = None
    try:
        filler = spool / "filler.bin"  # leaves about 2 MiB for instances of 128 KiB
        filler.write_bytes(bytes(6 * 1024 * 1024))
        port = free_port()
        # Associations are refused only at 100 % fill and nothing is cleaned up: the C-STORE itself
        # must meet the full disk. No study completes while the test runs.
        config = _config(tmp_path, port, idle_seconds=3600, retention={"refuse_above": 1.0, "cleanup_above": 1.0})
        log = tmp_path / "serve.log"
        node = _serve(config, log)
        wait_port(port, 90)
        study = pydicom.uid.generate_uid()
        paths = f.write_datasets([f.make_cr(256, 256, study_uid=study, instance_number=i + 1) for i in range(30)],
                                 tmp_path / "in")
        got = statuses(storescu(port, *paths, options=("--no-halt",)))  # go on after a refusal
        stored = got.count(0)
        assert 1 <= stored < len(paths) and got == [0] * stored + [0xA700] * (len(paths) - stored), got
        assert not list(spool.rglob("*.partial")), "a partial file was left behind"
        assert {p.stem for p in spool.rglob("*.dcm")} == {p.stem for p in paths[:stored]}
        for sent in paths[:stored]:  # spooled under its SOP Instance UID, complete
            assert pydicom.dcmread(spool / study / sent.name).PixelData == pydicom.dcmread(sent).PixelData
        assert "0xA700 Out of Resources: spool disk full" in log.read_text()

        filler.unlink()  # space returns: receiving resumes
        later = f.write_datasets([f.make_cr(256, 256, study_uid=study, instance_number=99)], tmp_path / "later")
        assert statuses(storescu(port, *later)) == [0]
        store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with store.session() as s:
                recorded = set(s.scalars(select(Instance.sop_instance_uid)))
            if len(recorded) >= stored + 1:
                break
            time.sleep(0.2)
        assert recorded == {p.stem for p in paths[:stored] + later}
    finally:
        if node is not None:
            _kill_group(node, signal.SIGTERM)
        unmount(spool)
    record_case("fault", "spool disk full (8 MiB tmpfs, real ENOSPC)",
                "0xA700 for what did not fit; nothing half-written; 0x0000 again once space was freed",
                instances_sent=len(paths) + 1, acknowledged=stored + 1, refused=len(paths) - stored, lost=0,
                status="0xA700")


PRIOR_ROUTING = [{"name": "chest radiograph", "modality": "CR|DX", "body_part": "CHEST|",
                  "tasks": ["chest_pathology_classification", "longitudinal_comparison"]}]


def test_a_prior_fetch_that_finds_nothing_or_gets_no_answer_skips_only_the_comparison(tmp_path_factory, tmp_path):
    """(a) the PACS (Orthanc) has no earlier study of the patient; (b) the PACS accepts the TCP connection
    and never answers. Either way the chest study's other task runs, its SR is written, and the
    comparison is skipped with the reason logged, within the configured query timeout."""
    from .orthanc import orthanc_server

    orthanc = orthanc_server(tmp_path_factory)
    # The PACS holds a study, of another patient.
    other = f.make_cr(32, 32, PatientID="ANOTHER-PATIENT")
    other.StudyDate = "20200101"
    orthanc.upload(f.write_datasets([other], tmp_path / "other")[0])
    pacs_port = orthanc.dicom_port
    port = free_port()
    config = _config(tmp_path, port, routing=PRIOR_ROUTING,
                     pacs={"peer": str(orthanc.peer), "query_timeout_s": 3, "retrieve_timeout_s": 5},
                     jobs={"max_attempts": 2, "retry_initial_s": 1})  # a silent PACS is retried once
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")

    def send_study() -> str:
        ds = f.make_cr(64, 64)
        assert statuses(storescu(port, *f.write_datasets([ds], tmp_path / "in" / ds.StudyInstanceUID))) == [0]
        return str(ds.StudyInstanceUID)

    def finished_job(study_uid: str) -> Job:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with store.session() as s:
                job = s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)).first()
                if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                    s.expunge(job)
                    return job
            time.sleep(0.3)
        raise AssertionError(f"no finished job for {study_uid}; node log:\n{log.read_text()[-3000:]}")

    def check(study_uid: str, reason: str) -> float:
        job = finished_job(study_uid)
        assert job.state is JobState.DONE, job.error
        assert any(reason in note for note in job.notes), job.notes
        assert list((tmp_path / "node" / "results" / study_uid).glob("SR_*.dcm")), "no SR written"
        assert any(study_uid in line and reason in line for line in log.read_text().splitlines())
        return (job.finished_at - job.started_at).total_seconds()

    try:
        wait_port(port, 90)
        first = send_study()
        none_found = check(first, "no earlier study of this patient on the PACS")

        orthanc.stop(kill=True)
        with socket.socket() as silent:  # accepts (the kernel's backlog), never reads or answers
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            silent.bind(("127.0.0.1", pacs_port))
            silent.listen(16)
            second = send_study()
            no_answer = check(second, "prior query failed (no answer from ORTHANC@127.0.0.1")
        assert "within 3.0 s" in log.read_text()  # the configured query timeout, not the 30 s default
    finally:
        _kill_group(node, signal.SIGTERM)
        orthanc.stop(kill=True)
    record_case("fault", "prior fetch: the PACS has no earlier study", "comparison skipped with the reason; "
                "the other task ran and the SR was written", instances_sent=1, processed=1, lost=0,
                job_seconds=round(none_found, 1))
    record_case("fault", "prior fetch: the PACS accepts and never answers", "query timed out after the configured "
                "3 s; comparison skipped with the reason; the SR was written", instances_sent=1, processed=1, lost=0,
                job_seconds=round(no_answer, 1))


@pytest.mark.parametrize("taken", ["scp", "http"])
def test_a_port_held_by_another_process_stops_serve_with_a_clear_message(tmp_path, taken):
    """IT starts the node beside something that holds its DICOM or HTTP port: one line saying which
    port and which setting, exit status 2, no traceback, and nothing left listening."""
    scp_port, http_port = free_port(), free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", scp_port if taken == "scp" else http_port))
    holder.listen()
    try:
        config = _config(tmp_path, scp_port, http={"bind": "127.0.0.1", "port": http_port})
        done = subprocess.run([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    setting = "scp.port" if taken == "scp" else "http.port"
    port = scp_port if taken == "scp" else http_port
    assert f"127.0.0.1:{port}" in output and setting in output, output


def test_a_node_whose_http_port_is_taken_closes_its_scp_again(tmp_path):
    """In process (a library user, or a supervisor that restarts in place): the SCP bound first does
    not stay listening when the HTTP port then fails."""
    from medversa.node.service import Node, PortUnavailable
    from medversa.node.settings import NodeSettings

    scp_port, http_port = free_port(), free_port()
    settings = NodeSettings(**yaml.safe_load(_config(tmp_path, scp_port, http={"bind": "127.0.0.1",
                                                                               "port": http_port}).read_text()))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", http_port))
        holder.listen()
        node = Node(settings)
        with pytest.raises(PortUnavailable, match="http.port"):
            node.start()
    assert node.scp._server is None and node.worker is None
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", scp_port)) != 0


def test_a_stopped_node_releases_its_ports(tmp_path):
    """Stop closes the listening sockets themselves (a restart in place binds the same ports at once)."""
    from medversa.node.service import Node
    from medversa.node.settings import NodeSettings

    scp_port, http_port = free_port(), free_port()
    raw = yaml.safe_load(_config(tmp_path, scp_port, http={"bind": "127.0.0.1", "port": http_port}).read_text())
    settings = NodeSettings(**raw, broker_url="redis://127.0.0.1:1/0")  # external broker: no worker to start
    node = Node(settings)
    node.start()
    node.stop()
    for port in (scp_port, http_port):
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))  # raises EADDRINUSE while the old socket is open
