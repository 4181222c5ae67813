"""Benchmark: a reader's annotation stored in the PACS -> the node's answer SR in the PACS (p50, p95).

A throwaway Orthanc 1.10 with deploy/orthanc/autoroute.lua (StableAge 1 s) and one ``medversa serve`` on its
embedded default (SQLite job store and broker, its own Celery worker) with the chosen model. A chest
radiograph is stored and analysed first (auto-routed, as in a hospital); then, one after another as a
reader would, ``--asks`` OHIF 3.13-shaped measurement reports (a rectangle asking a question: region
captioning plus VQA) are C-STOREd into Orthanc from a "viewer" AE. Each latency runs from the start of
that C-STORE until Orthanc answers a ``/tools/find`` for the new answer SR's series (polled every 50 ms).

Usage::

    python tools/bench_ask.py                      # the bundled demo model (the node's default)
    python tools/bench_ask.py --preset tiny        # random weights, full decode of both tasks
    python tools/bench_ask.py --asks 20 --json

Figures include the node scheduler's tick (1 s: it looks at new annotation objects once a tick), the
worker's pick-up from the SQLite broker, the model, the SR build and the export back to Orthanc.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root, for tests/ask_fixtures.py (the OHIF-shaped report)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _answers(orthanc, study_uid: str) -> int:
    found = orthanc.request("POST", "/tools/find", {
        "Level": "Series", "Query": {"StudyInstanceUID": study_uid, "SeriesDescription": "MedVersa answers*"}})
    return len(found)


def bench_ask(asks: int = 10, preset: str | None = None, timeout_s: float = 300.0) -> dict:
    """Run the benchmark; returns the figures (seconds)."""
    from medversa.benchmarks.local_orthanc import OrthancServer
    from medversa.benchmarks.peers import free_port, wait_port
    from medversa.node.scu import store_datasets
    from tests import dicom_factory as f
    from tests.ask_fixtures import ohif_measurement_report, rectangle_group

    work = Path(tempfile.mkdtemp(prefix="bench-ask-"))
    node_port = free_port()
    orthanc = OrthancServer(work / "orthanc", modalities={"medversa": ("MEDVERSA", "127.0.0.1", node_port)},
                            lua_scripts=[REPO / "deploy" / "orthanc" / "autoroute.lua"], stable_age=1,
                            extra_config={"UserMetadata": {"MedversaForwarded": 1024}}).start()
    config = work / "medversa.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(work / "node"), "idle_seconds": 1,
        "scp": {"ae_title": "MEDVERSA", "bind": "127.0.0.1", "port": node_port},
        "http": {"port": free_port()}, "logging": {"json_format": False, "level": "INFO"},
        "model": {"preset": preset} if preset else {},
        "routing": [{"name": "chest radiograph", "modality": "CR|DX", "tasks": ["report_impression"]}],
        "export": {"destinations": [str(orthanc.peer)]},
        "pacs": {"peer": str(orthanc.peer), "confirm_completeness": False}}))
    log = work / "serve.log"
    serve = subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                             stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    latencies: list[float] = []
    try:
        wait_port(node_port, 120)
        image = f.make_cr(256, 256, body_part="CHEST", PatientID="BENCH-ASK", SeriesDescription="CHEST PA")
        store_datasets(orthanc.peer, "VIEWER", [image])
        study_uid = str(image.StudyInstanceUID)
        deadline = time.monotonic() + timeout_s
        while not any("MedVersa report" in str(s.get("MainDicomTags", {}).get("SeriesDescription", ""))
                      for s in orthanc.request("POST", "/tools/find", {"Level": "Series", "Expand": True,
                                                                       "Query": {"StudyInstanceUID": study_uid}})):
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError(f"the study was not analysed; node log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        for k in range(asks):
            report = ohif_measurement_report(image, [rectangle_group(image, (40 + k, 50, 120 + k, 140),
                                                                     "Is there a pneumothorax?")])
            started = time.monotonic()
            outcome = store_datasets(orthanc.peer, "VIEWER", [report])
            if not outcome[0].ok:
                raise RuntimeError(f"C-STORE into Orthanc failed: {outcome[0]}")
            while _answers(orthanc, study_uid) < k + 1:
                if time.monotonic() - started > timeout_s or serve.poll() is not None:
                    raise RuntimeError(f"ask {k + 1}: no answer; node log:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            latencies.append(time.monotonic() - started)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, 15)
            serve.wait(60)
        orthanc.stop(kill=True)
    return {"model": preset or "bundled demo (embedded default)", "asks": asks,
            "p50_s": round(statistics.median(latencies), 2), "p95_s": round(_percentile(latencies, 0.95), 2),
            "min_s": round(min(latencies), 2), "max_s": round(max(latencies), 2),
            "latencies_s": [round(x, 2) for x in latencies], "work_dir": str(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=10, help="annotation objects stored one after another")
    parser.add_argument("--preset", default=None, help="model preset (default: the bundled demo model)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    report = bench_ask(args.asks, args.preset)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['model']}: {report['asks']} annotation(s) stored in Orthanc -> answer SR in Orthanc: "
              f"p50 {report['p50_s']} s, p95 {report['p95_s']} s (min {report['min_s']} s, max {report['max_s']} s)")


if __name__ == "__main__":
    main()
