"""Benchmarks of the node (``medversa bench ingest`` / ``bench e2e``): they print figures.

ingest: instances/s and MB/s of our SCP (``medversa serve``, durable spool: fsync
before Success) against dcmtk's ``storescp`` receiving the same files from the same
``storescu`` on the same machine, both with TCP_NODELAY=1; plus the peak resident
memory of ``serve``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .tools import dcmtk, free_port, wait_port


def synthetic_cr(study_uid: str, index: int, size: int = 512, patient: str = "BENCH") -> Dataset:
    """A chest CR with 12-bit noise pixels (realistic size, no patient data)."""
    rng = np.random.default_rng(index)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series"])
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Bench^Synthetic", patient, "O", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", "", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = 1, index + 1, ["L", "F"]
    ds.PixelSpacing = [0.2, 0.2]
    ds.set_pixel_data(rng.integers(0, 4096, (size, size), dtype=np.uint16), "MONOCHROME2", 12,
                      generate_instance_uid=False)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_corpus(folder: Path, instances: int, per_study: int = 1, size: int = 512) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study = generate_uid()
    for i in range(instances):
        if i % per_study == 0:
            study = generate_uid()
        ds = synthetic_cr(study, i, size, patient=f"BENCH{i // per_study}")
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _storescu(port: int, aec: str, files: list[Path]) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    t0 = time.perf_counter()
    subprocess.run([dcmtk("storescu") or "storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_ingest(instances: int = 200, repeats: int = 3, size: int = 512) -> dict:
    storescu, storescp = dcmtk("storescu"), dcmtk("storescp")
    if not (storescu and storescp):
        raise RuntimeError("dcmtk's storescu and storescp are needed for this benchmark")
    work = Path(tempfile.mkdtemp(prefix="medversa-bench-"))
    try:
        files = write_corpus(work / "corpus", instances, size=size)
        mb = sum(p.stat().st_size for p in files) / 1e6
        baseline = []
        for r in range(repeats):
            out = work / f"storescp{r}"
            out.mkdir()
            port = free_port()
            scp = subprocess.Popen([storescp, "-od", str(out), str(port)], env=dict(os.environ, TCP_NODELAY="1"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                baseline.append(_storescu(port, "STORESCP", files))
            finally:
                scp.terminate()
                scp.wait(10)
        ours, peak = [], 0.0
        for r in range(repeats):
            port, http = free_port(), free_port()
            config = work / f"node{r}.yaml"
            config.write_text(yaml.safe_dump({
                "data_dir": str(work / f"node{r}"), "idle_seconds": 3600,
                "scp": {"port": port, "bind": "127.0.0.1"}, "http": {"port": http},
                "model": {"preset": "tiny"}, "logging": {"level": "WARNING", "json_format": False},
            }))
            node = subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_port(port, 120)
                ours.append(_storescu(port, "MEDVERSA", files))
                peak = max(peak, _peak_rss_mb(node.pid))
                stored = len(list((work / f"node{r}" / "spool").rglob("*.dcm")))
                if stored != instances:
                    raise RuntimeError(f"our SCP spooled {stored} of {instances} instances")
            finally:
                os.killpg(node.pid, 15)
                node.wait(30)
        best_base, best_ours = min(baseline), min(ours)
        return {
            "instances": instances, "megabytes": round(mb, 1), "repeats": repeats,
            "storescp": {"seconds": round(best_base, 3), "instances_per_s": round(instances / best_base, 1),
                         "MB_per_s": round(mb / best_base, 1)},
            "medversa_serve": {"seconds": round(best_ours, 3), "instances_per_s": round(instances / best_ours, 1),
                               "MB_per_s": round(mb / best_ours, 1), "peak_rss_MB": round(peak, 1),
                               "durable": "fsync of file and folder before each Success"},
            "ratio_vs_storescp": round(best_base / best_ours, 3),
            "all_runs_s": {"storescp": [round(x, 3) for x in baseline], "medversa_serve": [round(x, 3) for x in ours]},
            "machine": {"cpus": os.cpu_count()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_json(report: dict) -> None:
    print(json.dumps(report, indent=2))




#: Planted answers for the e2e benchmark: the random-weight demo model never emits the end
#: symbol, so free decoding would always run to max_new_tokens (450) for every task.
E2E_SCRIPT = {
    "report_findings": "The lungs are clear. There is no pleural effusion or pneumothorax. The heart size is normal.",
    "report_impression": "No acute cardiopulmonary process.",
    "chest_pathology_classification": "No finding.",
    "pathology_detection": "pleural effusion <N/A>, pneumothorax <N/A>, lung opacity <DET>.",
    "chest_organ_segmentation": "The segmentation mask of {target} is <2DSEG>.",
    "longitudinal_comparison": "No change since the prior study.",
}


def _sr_in_orthanc(orthanc, study_uid: str) -> bool:
    found = orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {
        "StudyInstanceUID": study_uid, "Modality": "SR"}})
    return bool(found)


def bench_e2e(studies: int = 20, idle_seconds: float = 2.0, preset: str = "demo", modes: tuple[str, ...] = ("embedded", "redis"),
              images_per_study: int = 2, size: int = 512) -> dict:
    """Seconds from the last instance's C-STORE to the SR stored in Orthanc, per study (sequential arrivals)."""
    from .config import Peer
    from .dimse import store_datasets
    from .orthanc_local import OrthancServer

    report: dict = {"studies": studies, "idle_seconds": idle_seconds, "preset": preset,
                    "images_per_study": images_per_study,
                    "model_note": "random weights with planted (scripted) answers: decoding stops as a trained model's would",
                    "machine": {"cpus": os.cpu_count()}}
    for mode in modes:
        if mode == "redis" and shutil.which("redis-server") is None:
            report[mode] = {"skipped": "redis-server is not installed"}
            continue
        work = Path(tempfile.mkdtemp(prefix=f"medversa-e2e-{mode}-"))
        procs: list[subprocess.Popen] = []
        orthanc = None
        try:
            node_port, http = free_port(), free_port()
            orthanc = OrthancServer(work / "orthanc", modalities={"medversa": ("MEDVERSA", "127.0.0.1", node_port)}).start()
            script = work / "script.yaml"
            script.write_text(yaml.safe_dump(E2E_SCRIPT))
            config = {
                "data_dir": str(work / "node"), "idle_seconds": idle_seconds,
                "scp": {"port": node_port, "bind": "127.0.0.1"}, "http": {"port": http},
                "export": {"destinations": [str(orthanc.peer)]},
                "model": {"preset": preset, "scripted_answers": str(script)},
                "logging": {"level": "WARNING", "json_format": False},
            }
            if mode == "redis":
                redis_port = free_port()
                procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                               "--save", "", "--appendonly", "no"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                config["broker_url"] = f"redis://127.0.0.1:{redis_port}/0"
            path = work / "medversa.yaml"
            path.write_text(yaml.safe_dump(config))
            log = (work / "serve.log").open("w")
            procs.append(subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(path)],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if mode == "redis":
                procs.append(subprocess.Popen([sys.executable, "-m", "medversa.cli", "worker", "--config", str(path)],
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            wait_port(node_port, 120)
            peer = Peer(ae_title="MEDVERSA", host="127.0.0.1", port=node_port)
            latencies = []
            warmup = 1
            for i in range(studies + warmup):
                study = generate_uid()
                datasets = [synthetic_cr(study, i * 10 + k, size, patient=f"E2E{i}") for k in range(images_per_study)]
                outcomes = store_datasets(peer, "BENCHPACS", datasets, timeout=60)
                if not all(o.ok for o in outcomes):
                    raise RuntimeError(f"the node refused instances: {[o.message for o in outcomes if not o.ok]}")
                t0 = time.perf_counter()
                deadline = t0 + 300
                while not _sr_in_orthanc(orthanc, study):
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"no SR in Orthanc after 300 s for study {i}; see {work / 'serve.log'}")
                    time.sleep(0.1)
                if i >= warmup:  # the first study also loads the model
                    latencies.append(time.perf_counter() - t0)
            lat = np.array(latencies)
            report[mode] = {"p50_s": round(float(np.percentile(lat, 50)), 2),
                            "p95_s": round(float(np.percentile(lat, 95)), 2),
                            "max_s": round(float(lat.max()), 2),
                            "target_p95_s": idle_seconds + 5,
                            "meets_target": bool(np.percentile(lat, 95) <= idle_seconds + 5)}
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, 15)
                    except (ProcessLookupError, PermissionError):
                        proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            if orthanc is not None:
                orthanc.stop(kill=True)
            shutil.rmtree(work, ignore_errors=True)
    return report
