"""Faults with real processes: the node's own ``serve`` killed mid-stream, its worker killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import yaml
from medversa.node.store import Instance, Job, JobState, Store
from medversa.node.tools import wait_port
from pynetdicom import AE
from sqlalchemy import select

from . import dicom_factory as f
from .orthanc import free_port


def _config(tmp: Path, port: int, **extra) -> Path:
    path = tmp / "medversa.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp / "node"), "idle_seconds": 1,
        "scp": {"ae_title": "MEDVERSA", "bind": "127.0.0.1", "port": port},
        "http": {"port": free_port()}, "model": {"preset": "tiny"},
        "logging": {"json_format": False, "level": "INFO"}, **extra}))
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(30)


def test_serve_killed_during_a_stream_loses_no_acknowledged_instance(tmp_path):
    port = free_port()
    config = _config(tmp_path, port, idle_seconds=3600)
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    datasets = [f.make_cr(256, 256, study_uid=pydicom.uid.generate_uid()) for _ in range(60)]
    acknowledged: list[str] = []
    try:
        wait_port(port, 90)
        ae = AE("PACS")
        ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        assert assoc.is_established
        for i, ds in enumerate(datasets):
            if i == 25:
                _kill_group(node)  # SIGKILL to serve and its worker, mid-association
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


def test_worker_killed_mid_job_the_job_completes_after_restart(tmp_path):
    port = free_port()
    config = _config(tmp_path, port)
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
    finally:
        _kill_group(node, signal.SIGTERM)


def test_pacs_down_during_export_retries_then_dead_letters_and_retry_sends(tmp_path):
    from medversa.node.store import Export, ExportState
    from sqlalchemy import func

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

    def send_study() -> str:
        uid = pydicom.uid.generate_uid()
        ae = AE("PACS")
        ds = f.make_cr(96, 96, study_uid=uid)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        return uid

    def wait(predicate, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise AssertionError(f"{what}; node log:\n{log.read_text()[-3000:]}")

    try:
        wait_port(port, 90)
        orthanc.stop(kill=True)
        first = send_study()
        wait(lambda: exports(ExportState.PENDING) >= 1, 180, "no pending export while the PACS is down")
        with store.session() as s:
            assert s.scalars(select(Export)).first().attempts >= 1
        orthanc.start()  # back, on the same port: the backoff retry delivers
        wait(lambda: exports(ExportState.PENDING) == 0 and exports(ExportState.DELIVERED) >= 1, 120,
             "exports not delivered after the PACS returned")
        assert orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": first, "Modality": "SR"}})

        orthanc.stop(kill=True)
        second = send_study()
        wait(lambda: exports(ExportState.DEAD) >= 1, 240, "no dead-letter after the tries ran out")
        with store.session() as s:
            job_id = s.scalars(select(Export).where(Export.state == ExportState.DEAD)).first().job_id
        orthanc.start()
        retried = subprocess.run([sys.executable, "-m", "medversa.cli", "retry", str(job_id), "--config", str(config)],
                                 capture_output=True, text=True, timeout=120)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert exports(ExportState.DEAD) == 0
        assert orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": second, "Modality": "SR"}})
    finally:
        _kill_group(node, signal.SIGTERM)
        orthanc.stop(kill=True)


def test_redis_down_the_scp_keeps_spooling_and_jobs_queue_when_it_returns(tmp_path):
    import shutil

    import pytest

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
