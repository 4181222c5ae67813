"""tools/viewer_matrix.py renders what the viewer tests recorded, and only that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "viewer_matrix.py"


def test_matrix_shows_the_latest_recorded_outcome_per_object_and_viewer(tmp_path):
    rows = [
        {"kind": "SR TID 1500", "viewer": "dciodvfy", "outcome": "fail", "detail": "old", "test": "t::a", "time": 1},
        {"kind": "SR TID 1500", "viewer": "dciodvfy", "outcome": "pass", "detail": "no errors", "test": "t::a",
         "time": 2},
        {"kind": "SEG (CT)", "viewer": "OHIF 3.13.2 (browser)", "outcome": "pass", "detail": "drawn",
         "test": "tests/test_viewer_ohif.py::x", "time": 3},
        {"kind": "a kind the tool does not list", "viewer": "dciodvfy", "outcome": "pass", "detail": "valid",
         "test": "t::b", "time": 4},
    ]
    log = tmp_path / "results.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "matrix.md"
    result = subprocess.run([sys.executable, str(TOOL), str(log), str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    table = {line.split(" | ")[0].lstrip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert "pass: no errors" in table["SR TID 1500"] and "old" not in table["SR TID 1500"]
    assert "pass: drawn" in table["SEG (CT)"]
    assert "not checked" in table["SR TID 2000 (text)"]  # nothing recorded: never claimed
    assert "pass: valid" in table["a kind the tool does not list"]  # a recorded check is never dropped
    assert "`tests/test_viewer_ohif.py`" in out.read_text()


def test_matrix_refuses_to_render_without_recorded_checks(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "none.jsonl"), str(tmp_path / "m.md")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no recorded viewer checks" in result.stderr
