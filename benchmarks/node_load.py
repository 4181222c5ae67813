"""Load benchmark of the node (``medversa bench load``): many associations at once against
``serve``, every study processed once, nothing lost, peak memory of ``serve`` and its worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .peers import free_port, wait_port
from .synthetic import E2E_SCRIPT, synthetic_cr


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

    from medversa.node.job_store import Instance, Job, JobState, Store, Study

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
