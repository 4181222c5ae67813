"""radgraph_annotate.py with the real radgraph package on a tiny random RadGraph model, by hand and
through ``medversa eval``'s RadGraph F1 (:class:`RadGraphProcess`).

The radgraph package needs transformers < 5 (ours is 5), so it lives in another environment:
set MEDVERSA_RADGRAPH_PYTHON to its interpreter (``python -m venv env && env/bin/pip install
radgraph "transformers<5" torch``). Without it this test is skipped, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from medversa.training.radgraph import AnnotationFile, RadGraphF1
from medversa.training.text_metrics import load_text_metrics

from .conftest import REPO

PYTHON = os.environ.get("MEDVERSA_RADGRAPH_PYTHON", "")


@pytest.mark.skipif(not PYTHON, reason="MEDVERSA_RADGRAPH_PYTHON (an environment with radgraph) is not set")
def test_annotations_from_the_radgraph_package_score_in_eval(tmp_path: Path, monkeypatch) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    subprocess.run([PYTHON, str(REPO / "tests" / "radgraph_tiny_model.py"), str(tmp_path / "models")],
                   check=True, env=env, capture_output=True, timeout=300)
    predictions = tmp_path / "predictions.jsonl"
    pairs = [("Left pleural effusion.", "No pneumothorax. Heart is normal."), ("Heart is normal.", "Heart is normal.")]
    predictions.write_text("".join(json.dumps({"task": "report_findings", "output": o, "reference": r}) + "\n"
                                   for o, r in pairs))
    out = tmp_path / "radgraph.json"
    subprocess.run([PYTHON, str(REPO / "training" / "radgraph_annotate.py"), str(predictions), "--model",
                    str(tmp_path / "models" / "radgraph"), "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=300)
    annotations = json.loads(out.read_text())
    assert [a["text"] for a in annotations] == ["Left pleural effusion.", "No pneumothorax. Heart is normal.",
                                                "Heart is normal."]
    assert all(a["entities"] for a in annotations)  # random weights, but spans are labelled
    scores = RadGraphF1(AnnotationFile(out)).score([o for o, _ in pairs], [r for _, r in pairs])
    assert scores[1] == 1.0 and 0.0 <= scores[0] < 1.0
    # In one step, as `medversa eval --radgraph DIR --radgraph-python PY` does: the same scores.
    active, _ = load_text_metrics(radgraph=tmp_path / "models" / "radgraph", radgraph_python=PYTHON)
    direct = {m.name: m for m in active}["radgraph"]
    assert direct.score([o for o, _ in pairs], [r for _, r in pairs]).tolist() == scores.tolist()
    # Asked again (RadCliQ asks for the same reports): answered without running the model again.
    monkeypatch.setattr("medversa.training.radgraph.subprocess.run", lambda *a, **k: pytest.fail("ran again"))
    assert direct.score([o for o, _ in pairs], [r for _, r in pairs]).tolist() == scores.tolist()
