"""Latency benchmark of the node (``medversa bench e2e``): seconds from the last C-STORE of a study
to its SR stored in a throwaway Orthanc, on the embedded default and with a Redis broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.uid import generate_uid

from .peers import free_port, wait_port
from .synthetic import E2E_SCRIPT, synthetic_cr


def _sr_in_orthanc(orthanc, study_uid: str) -> bool:
    found = orthanc.request("POST", "/tools/find", {"Level": "Series", "Query": {
        "StudyInstanceUID": study_uid, "Modality": "SR"}})
    return bool(found)


def bench_e2e(studies: int = 20, idle_seconds: float = 2.0, preset: str = "demo",
              modes: tuple[str, ...] = ("embedded", "redis"),
              images_per_study: int = 2, size: int = 512) -> dict:
    """Seconds from the last instance's C-STORE to the SR stored in Orthanc, per study (sequential arrivals)."""
    from medversa.node.scu import store_datasets
    from medversa.node.settings import Peer

    from .local_orthanc import OrthancServer

    bundled = preset == "bundled"
    report: dict = {"studies": studies, "idle_seconds": idle_seconds, "preset": preset,
                    "images_per_study": images_per_study,
                    "model_note": ("the bundled trained demo model, free greedy decoding" if bundled else
                                   "random weights with planted (scripted) answers: "
                                   "decoding stops as a trained model's would"),
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
            orthanc = OrthancServer(work / "orthanc",
                                    modalities={"medversa": ("MEDVERSA", "127.0.0.1", node_port)}).start()
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


