"""Ingest benchmark of the node (``medversa bench ingest``): it prints figures.

Instances/s and MB/s of our SCP (``medversa serve``, durable spool: fsync
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

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from medversa.node.spool import Spool

from .peers import dcmtk, free_port, wait_port
from .synthetic import write_corpus


def _storescu(port: int, aec: str, files: list[Path]) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    t0 = time.perf_counter()
    subprocess.run([dcmtk("storescu") or "storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                   check=True, env=env,
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

    from medversa.node.dicom_classes import ACCEPTED_SYNTAXES, STORAGE_CLASSES

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
            start_bare = f"from medversa.benchmarks.node_ingest import serve_bare; serve_bare({port})"
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


