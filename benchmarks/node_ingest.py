"""Benchmarks of the node (``medversa bench ingest`` / ``bench e2e``): they print figures.

ingest: instances/s and MB/s of our SCP (``medversa serve``, durable spool: fsync
before Success) against dcmtk's ``storescp`` receiving the same files from the same
``storescu`` on the same machine, both with TCP_NODELAY=1; plus the peak resident
memory of ``serve``. Two more figures explain the ratio: pynetdicom with an empty
C-STORE handler (the library's own ceiling on this machine, nothing stored) and the
cost of the spool's durable write alone (write, fsync, rename, folder fsync) against
a plain write of the same bytes, from which ``ceiling_ratio_if_durable`` follows: the
best ratio any SCP that fsyncs before Success could reach, even one with storescp's
own network and parsing cost (storescp never fsyncs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .spool import Spool
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


def serve_bare(port: int) -> None:
    """pynetdicom accepting our storage classes with an empty C-STORE handler (never returns)."""
    from pynetdicom import AE, evt

    from .dicom_classes import ACCEPTED_SYNTAXES, STORAGE_CLASSES

    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 0
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(uid, list(ACCEPTED_SYNTAXES))
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        time.sleep(3600)


def _time_receiver(command: list[str], port: int, aec: str, files: list[Path]) -> float:
    """Seconds storescu takes to send ``files`` to a receiver that ``command`` starts on ``port``."""
    proc = subprocess.Popen(command, env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, 60)
        return _storescu(port, aec, files)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def write_costs(files: list[Path], folder: Path) -> dict[str, float]:
    """Milliseconds per instance of the spool's durable write and of a plain write of the same bytes.

    Each instance goes to its own study folder, as in the benchmark's corpus, so the durable
    path pays what the SCP pays: folder creation and its fsync, the file's fsync, the rename
    and the folder's fsync.
    """
    blobs = [p.read_bytes() for p in files]
    spool = Spool(folder / "durable")
    t0 = time.perf_counter()
    for i, data in enumerate(blobs):
        spool.write(f"1.2.{i}", f"1.2.{i}.1", data)
    durable = time.perf_counter() - t0
    plain_root = folder / "plain"
    t0 = time.perf_counter()
    for i, data in enumerate(blobs):
        study = plain_root / f"1.2.{i}"
        study.mkdir(parents=True, exist_ok=True)
        temp = study / ".1.tmp"
        temp.write_bytes(data)
        os.replace(temp, study / "1.dcm")
    plain = time.perf_counter() - t0
    return {"durable_ms": round(1e3 * durable / len(blobs), 3), "plain_ms": round(1e3 * plain / len(blobs), 3)}


def _figures(seconds: float, instances: int, mb: float) -> dict:
    return {"seconds": round(seconds, 3), "instances_per_s": round(instances / seconds, 1),
            "MB_per_s": round(mb / seconds, 1), "ms_per_instance": round(1e3 * seconds / instances, 3)}


def bench_ingest(instances: int = 200, repeats: int = 3, size: int = 512) -> dict:
    storescu, storescp = dcmtk("storescu"), dcmtk("storescp")
    if not (storescu and storescp):
        raise RuntimeError("dcmtk's storescu and storescp are needed for this benchmark")
    work = Path(tempfile.mkdtemp(prefix="medversa-bench-"))
    try:
        files = write_corpus(work / "corpus", instances, size=size)
        mb = sum(p.stat().st_size for p in files) / 1e6
        baseline, bare = [], []
        for r in range(repeats):
            out = work / f"storescp{r}"
            out.mkdir()
            port = free_port()
            baseline.append(_time_receiver([storescp, "-od", str(out), str(port)], port, "STORESCP", files))
            port = free_port()
            start_bare = f"from medversa.node.bench import serve_bare; serve_bare({port})"
            bare.append(_time_receiver([sys.executable, "-c", start_bare], port, "BARE", files))
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
        writes = write_costs(files, work / "writes")
        best_base, best_ours = min(baseline), min(ours)
        base_ms = 1e3 * best_base / instances
        fsync_ms = max(0.0, writes["durable_ms"] - writes["plain_ms"])
        return {
            "instances": instances, "megabytes": round(mb, 1), "repeats": repeats,
            "storescp": _figures(best_base, instances, mb),
            "medversa_serve": {**_figures(best_ours, instances, mb), "peak_rss_MB": round(peak, 1),
                               "durable": "fsync of file and folder before each Success"},
            "ratio_vs_storescp": round(best_base / best_ours, 3),
            "pynetdicom_empty_handler": {**_figures(min(bare), instances, mb),
                                         "ratio_vs_storescp": round(best_base / min(bare), 3)},
            "spool_write": {**writes, "fsync_cost_ms": round(fsync_ms, 3)},
            "ceiling_ratio_if_durable": round(base_ms / (base_ms + fsync_ms), 3),
            "all_runs_s": {"storescp": [round(x, 3) for x in baseline], "medversa_serve": [round(x, 3) for x in ours],
                           "pynetdicom_empty_handler": [round(x, 3) for x in bare]},
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

    bundled = preset == "bundled"
    report: dict = {"studies": studies, "idle_seconds": idle_seconds, "preset": preset,
                    "images_per_study": images_per_study,
                    "model_note": ("the bundled trained demo model, free greedy decoding" if bundled else
                                   "random weights with planted (scripted) answers: decoding stops as a trained model's would"),
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
                "model": {} if bundled else {"preset": preset, "scripted_answers": str(script)},
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


# -- load: many associations at once, every study processed once, nothing lost ----------------


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc; the embedded worker of ``serve``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a live process, in MB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out["peak_rss_mb" if line.startswith("VmHWM") else "rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def _send_studies(port: int, calling: str, batches: list[list[Dataset]], start: object) -> tuple[int, list[str], str]:
    """One association sending whole studies one after another: (sent, acknowledged UIDs, error)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(batches[0][0].SOPClassUID, ExplicitVRLittleEndian)
    start.wait()  # type: ignore[attr-defined]  # a threading.Barrier: every association at once
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
    if not assoc.is_established:
        return 0, [], f"{calling}: association not established"
    sent, acknowledged, error = 0, [], ""
    try:
        for study in batches:
            for ds in study:
                sent += 1
                status = assoc.send_c_store(ds)
                if status and int(status.Status) == 0x0000:
                    acknowledged.append(str(ds.SOPInstanceUID))
                elif not assoc.is_established:
                    return sent, acknowledged, f"{calling}: association lost after {sent} instance(s)"
                else:
                    error = f"{calling}: status {getattr(status, 'Status', None)!r} for {ds.SOPInstanceUID}"
    finally:
        if assoc.is_established:
            assoc.release()
    return sent, acknowledged, error


def bench_load(associations: int = 20, instances: int = 2000, studies: int = 100, size: int = 64,
               idle_seconds: float = 5.0, preset: str = "tiny", tasks: tuple[str, ...] = ("report_impression",),
               timeout_s: float = 3600.0) -> dict:
    """``associations`` senders at once push ``instances`` CR instances in ``studies`` studies to a
    real ``medversa serve`` (embedded worker, random-weight ``preset`` with planted answers), and
    wait until every study's job is DONE.

    The node routes every CR study to ``tasks`` (default one text task, so a job costs about a
    second on a CPU and the run measures the node, not the model; the SR is written either way).

    Each association sends whole studies (study ``k`` goes over association ``k % associations``),
    so a study is complete after ``idle_seconds``; one job per study is the expected outcome, a
    second job version would mean a study was closed too early. Returned figures: instances sent,
    acknowledged (C-STORE Success), recorded, processed (in a study whose job is DONE) and lost
    (acknowledged but not recorded); studies processed; duplicate jobs and SRs; failed jobs; wall
    time from the first C-STORE to the last DONE job; peak RSS (VmHWM) of ``serve`` and of its
    worker. Raises RuntimeError when ``serve`` does not start.
    """
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import func, select

    from .store import Instance, Job, JobState, Store, Study

    if not 1 <= studies <= instances:
        raise ValueError(f"studies={studies} must be between 1 and instances={instances}")
    if associations < 1:
        raise ValueError(f"associations={associations} must be at least 1")
    # The senders are the load, not the subject: no log line per C-STORE on their side.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="medversa-load-"))
    node: subprocess.Popen | None = None
    try:
        uids = [generate_uid() for _ in range(studies)]
        corpus: list[list[Dataset]] = [[] for _ in range(studies)]
        for i in range(instances):
            k = i * studies // instances  # contiguous, as even as possible
            corpus[k].append(synthetic_cr(uids[k], i, size, patient=f"LOAD{k:04d}"))
        batches: list[list[list[Dataset]]] = [corpus[k::associations] for k in range(associations)]
        batches = [b for b in batches if b]

        port, http = free_port(), free_port()
        script = work / "script.yaml"
        script.write_text(yaml.safe_dump(E2E_SCRIPT))
        config = work / "medversa.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(work / "node"), "idle_seconds": idle_seconds,
            "scp": {"port": port, "bind": "127.0.0.1", "max_associations": max(10, len(batches) + 2)},
            "http": {"port": http}, "model": {"preset": preset, "scripted_answers": str(script)},
            "routing": [{"name": "load test", "modality": "CR", "tasks": list(tasks)}],
            "logging": {"level": "INFO", "json_format": False},
        }))
        log = work / "serve.log"
        with log.open("w") as out:
            node = subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            wait_port(port, 180)
        except RuntimeError:
            raise RuntimeError(f"serve did not start: {log.read_text()[-3000:]}") from None

        start = threading.Barrier(len(batches))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(batches)) as pool:
            results = list(pool.map(lambda ab: _send_studies(port, f"LOAD{ab[0]:02d}", ab[1], start),
                                    enumerate(batches)))
        send_s = time.perf_counter() - t0
        sent = sum(r[0] for r in results)
        acknowledged = {uid for r in results for uid in r[1]}
        errors = [r[2] for r in results if r[2]]

        store = Store(f"sqlite:///{(work / 'node' / 'medversa.db').resolve()}")

        def done_studies() -> int:
            with store.session() as s:
                return s.scalar(select(func.count(func.distinct(Job.study_id))).where(Job.state == JobState.DONE)) or 0

        memory_during: dict[str, dict[str, float]] = {}
        deadline = time.monotonic() + timeout_s
        while done_studies() < studies and time.monotonic() < deadline and node.poll() is None:
            time.sleep(0.5)
        wall_s = time.perf_counter() - t0
        time.sleep(max(2.0, idle_seconds + 1.5))  # a late second job version would show up now
        workers = _children(node.pid)
        memory_during["serve"] = _memory_mb(node.pid)
        memory_during["worker"] = _memory_mb(workers[0]) if workers else {}

        with store.session() as s:
            recorded = set(s.scalars(select(Instance.sop_instance_uid)))
            jobs_per_study = dict(s.execute(select(Study.study_instance_uid, func.count(Job.id))
                                            .join(Job, Job.study_id == Study.id).group_by(Study.id)).all())
            done = set(s.scalars(select(Study.study_instance_uid).join(Job, Job.study_id == Study.id)
                                 .where(Job.state == JobState.DONE)))
            failed = s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.FAILED)) or 0
            processed = s.scalar(select(func.count()).select_from(Instance).join(Study, Instance.study_id == Study.id)
                                 .where(Study.study_instance_uid.in_(done))) or 0
        results_dir = work / "node" / "results"
        srs = {uid: len(list((results_dir / uid).glob("SR_*.dcm"))) for uid in uids}
        report = {
            "associations": len(batches), "instances_sent": sent, "acknowledged": len(acknowledged),
            "recorded": len(acknowledged & recorded), "processed": processed,
            "lost": len(acknowledged - recorded), "studies": studies, "studies_processed": len(done & set(uids)),
            "studies_with_sr": sum(1 for n in srs.values() if n >= 1),
            "duplicate_jobs": sum(n - 1 for n in jobs_per_study.values() if n > 1),
            "duplicate_srs": sum(n - 1 for n in srs.values() if n > 1),
            "failed_jobs": failed, "sender_errors": errors[:10],
            "send_s": round(send_s, 2), "wall_s": round(wall_s, 2),
            "instances_per_s_received": round(sent / send_s, 1) if send_s else None,
            "serve": memory_during["serve"], "worker": memory_during["worker"],
            "peak_rss_mb": {"serve": memory_during["serve"].get("peak_rss_mb"),
                            "worker": memory_during["worker"].get("peak_rss_mb")},
            "setup": {"image": f"{size}x{size} CR, 16-bit", "preset": preset, "idle_seconds": idle_seconds,
                      "answers": "planted (scripted) answers: decoding stops as a trained model's would",
                      "tasks": list(tasks), "worker": "embedded, solo pool"},
            "machine": {"cpus": os.cpu_count()},
        }
        if report["studies_processed"] < studies:
            report["serve_log_tail"] = log.read_text()[-3000:]
        return report
    finally:
        if node is not None and node.poll() is None:
            try:
                os.killpg(node.pid, 15)
                node.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, 9)
        shutil.rmtree(work, ignore_errors=True)
