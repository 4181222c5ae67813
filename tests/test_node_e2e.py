"""End to end with real parts: Orthanc (the PACS, auto-routing with Lua), the node's own
``serve`` (and ``worker`` on a real Redis), results back in the same study in Orthanc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml

from . import dicom_factory as f
from .node_process import stop_serve
from .orthanc import OrthancServer, free_port

REPO = Path(__file__).resolve().parents[1]
AUTOROUTE = REPO / "deploy" / "orthanc" / "autoroute.lua"

SCRIPTED = {
    "report_findings": "The lungs are clear. There is a small left pleural effusion.",
    "report_impression": "Small left pleural effusion.",
    "chest_pathology_classification": "The main diagnosis is pleural effusion.",
    "pathology_detection": "pleural effusion <DET>, pneumothorax <N/A>.",
    "chest_organ_segmentation": "The segmentation mask of {target} is <2DSEG>.",
    "longitudinal_comparison": "The effusion is new since the prior study.",
}

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/Orthanc").exists(), reason="Orthanc is not installed")


def _node_config(tmp: Path, orthanc: OrthancServer, node_port: int, **extra) -> Path:
    script = tmp / "scripted.yaml"
    script.write_text(yaml.safe_dump(SCRIPTED))
    config = {
        "data_dir": str(tmp / "node"),
        "idle_seconds": 2,
        "scp": {"ae_title": "MEDVERSA", "bind": "127.0.0.1", "port": node_port},
        "pacs": {"peer": str(orthanc.peer), "completeness_wait_s": 30},
        "export": {"destinations": [str(orthanc.peer)], "backoff_initial_s": 1},
        "model": {"preset": "tiny", "scripted_answers": str(script)},
        "http": {"port": free_port()},
        "logging": {"json_format": False, "level": "INFO"},
        **extra,
    }
    path = tmp / "medversa.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _orthanc(tmp: Path, node_port: int) -> OrthancServer:
    return OrthancServer(
        tmp / "orthanc", modalities={"medversa": ("MEDVERSA", "127.0.0.1", node_port)}, lua_scripts=[AUTOROUTE],
        extra_config={"MedversaRouting": {"Modality": "medversa", "NodeAet": "MEDVERSA"},
                      "UserMetadata": {"MedversaForwarded": 1024}},
        stable_age=1,
    ).start()


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "medversa.cli", *cmd], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_health(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                report = json.loads(r.read())
                if report.get("ok"):
                    return report
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"node not healthy: {log.read_text()[-3000:]}")


def _results_in(orthanc: OrthancServer, study_uid: str) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for inst in orthanc.study_instances(study_uid):
        kinds.setdefault(inst.get("SOPClassUID", ""), []).append(inst)
    return kinds


SR, SEG, GSPS, SC = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4",
                     "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.7")


def _send_study(orthanc: OrthancServer, datasets, tmp: Path) -> None:
    for path in f.write_datasets(datasets, tmp):
        orthanc.upload(path)


def _wait_results(orthanc: OrthancServer, study_uid: str, log: Path, kinds=(SR, SEG, GSPS, SC), timeout=180):
    try:
        return orthanc.wait_for(lambda: (lambda r: r if all(k in r for k in kinds) else None)(
            _results_in(orthanc, study_uid)), timeout=timeout, interval=1)
    except Exception as exc:  # noqa: BLE001 - show what the node said
        raise AssertionError(f"results did not arrive ({exc}); node log:\n{log.read_text()[-4000:]}") from None


def _chest(study_uid=None, patient="PAT-E2E", date="20240102", time_="101010", n=1):
    study_uid = study_uid or pydicom.uid.generate_uid()
    return [f.make_cr(128, 128, study_uid=study_uid, PatientID=patient, StudyDate=date, StudyTime=time_,
                      instance_number=i + 1) for i in range(n)]


def test_embedded_node_processes_an_auto_routed_study_and_compares_with_the_prior(tmp_path):
    node_port = free_port()
    orthanc = _orthanc(tmp_path, node_port)
    log = tmp_path / "serve.log"
    node = _start(["serve", "--config", str(_node_config(tmp_path, orthanc, node_port))], log)
    try:
        cfg = yaml.safe_load((tmp_path / "medversa.yaml").read_text())
        _wait_health(cfg["http"]["port"], node, log)
        prior = _chest(date="20230101")
        _send_study(orthanc, prior, tmp_path / "prior")
        _wait_results(orthanc, prior[0].StudyInstanceUID, log, kinds=(SR,))
        current = _chest(date="20240102", n=2)
        _send_study(orthanc, current, tmp_path / "current")
        results = _wait_results(orthanc, current[0].StudyInstanceUID, log)
        assert len(results[SR]) == 1  # one report per study, never duplicated
        sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(results[SR][0]["ID"])))
        assert sr.StudyInstanceUID == current[0].StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
        assert prior[0].StudyInstanceUID in {s.StudyInstanceUID for s in sr.PertinentOtherEvidenceSequence}
        texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence if i.ValueType == "TEXT"]
        assert any("new since the prior study" in t for t in texts)
        # The node's results were not routed back to it by the PACS.
        time.sleep(3)
        status = subprocess.run([sys.executable, "-m", "medversa.cli", "status",
                                 "--config", str(tmp_path / "medversa.yaml")],
                                capture_output=True, text=True, timeout=60)
        assert "exports DELIVERED" in status.stdout and "DEAD" not in status.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg['http']['port']}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "medversa_instances_received_total" in metrics
    finally:
        stop_serve(node)
        orthanc.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_mode_with_a_separate_worker(tmp_path):
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node_port = free_port()
    orthanc = _orthanc(tmp_path, node_port)
    config = _node_config(tmp_path, orthanc, node_port, broker_url=f"redis://127.0.0.1:{redis_port}/0")
    serve = _start(["serve", "--config", str(config)], tmp_path / "serve.log")
    worker = _start(["worker", "--config", str(config), "--queues", "medversa-demo"], tmp_path / "worker.log")
    try:
        _wait_health(yaml.safe_load(config.read_text())["http"]["port"], serve, tmp_path / "serve.log")
        study = _chest(patient="PAT-REDIS")
        _send_study(orthanc, study, tmp_path / "in")
        results = _wait_results(orthanc, study[0].StudyInstanceUID, tmp_path / "worker.log")
        assert len(results[SR]) == 1
        assert "job" in (tmp_path / "worker.log").read_text()
    finally:
        stop_serve(worker)
        stop_serve(serve)
        orthanc.stop()
        redis.terminate()
        redis.wait(10)
