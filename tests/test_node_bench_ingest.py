"""``medversa bench ingest`` on a small corpus: every receiver gets every instance, and the
figures that explain the ratio (pynetdicom's own ceiling, the cost of fsync) are there and sane.
Figures only: nothing here is timed against a target."""

from __future__ import annotations

import pytest

from medversa.benchmarks.node_ingest import bench_ingest, write_costs
from medversa.benchmarks.peers import dcmtk
from medversa.benchmarks.synthetic import write_corpus
from medversa.node.spool import TEMP_SUFFIX

pytestmark = pytest.mark.skipif(not (dcmtk("storescu") and dcmtk("storescp")), reason="needs dcmtk")


def test_bench_ingest_reports_every_receiver_and_the_durability_ceiling():
    report = bench_ingest(instances=8, repeats=1, size=32)
    for receiver in ("storescp", "medversa_serve", "pynetdicom_empty_handler"):
        figures = report[receiver]
        assert figures["instances_per_s"] > 0 and figures["ms_per_instance"] > 0, report
    writes = report["spool_write"]
    assert writes["durable_ms"] > 0 and writes["plain_ms"] > 0, report
    assert 0 < report["ceiling_ratio_if_durable"] <= 1, report
    assert 0 < report["ratio_vs_storescp"], report
    assert len(report["all_runs_s"]["medversa_serve"]) == 1, report


def test_write_costs_go_through_the_spool(tmp_path):
    files = write_corpus(tmp_path / "corpus", 3, size=16)
    costs = write_costs(files, tmp_path / "writes")
    durable = sorted((tmp_path / "writes" / "durable").rglob("*.dcm"))
    assert sorted(p.read_bytes() for p in durable) == sorted(p.read_bytes() for p in files)
    assert not list((tmp_path / "writes" / "durable").rglob(f"*{TEMP_SUFFIX}")), "no temporary file is left"
    assert costs["durable_ms"] > 0 and costs["plain_ms"] > 0
