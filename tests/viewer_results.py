"""Viewer results recorded by the viewer tests, rendered into ``docs/viewer-matrix.md``.

Each check of an object kind in a viewer or validator appends one JSON line (kind, viewer,
outcome, detail, test) to ``$MEDVERSA_VIEWER_LOG`` (default ``build/viewer-results.jsonl``);
``tools/viewer_matrix.py`` renders the latest line per (kind, viewer) as the matrix. A check
records only after its assertions passed ("pass"), or records what it established otherwise
("fails in viewer" with the reason, for a known viewer limit that the test asserts).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIEWERS = ("OHIF 3.13.2 (browser)", "dciodvfy", "PixelMed DicomSRValidator", "highdicom read-back",
           "dcmtk dcmp2pgm")


def log_path() -> Path:
    return Path(os.environ.get("MEDVERSA_VIEWER_LOG", REPO / "build" / "viewer-results.jsonl"))


def record(kind: str, viewer: str, outcome: str, detail: str = "") -> None:
    if viewer not in VIEWERS:
        raise ValueError(f"unknown viewer {viewer!r}; known: {VIEWERS}")
    row = {"kind": kind, "viewer": viewer, "outcome": outcome, "detail": detail,
           "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0], "time": time.time()}
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
