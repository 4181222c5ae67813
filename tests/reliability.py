"""Reliability cases recorded by the tests themselves, rendered into ``docs/reliability.md``.

A fault, load or bad-input test calls :func:`record_case` once its assertions
have passed, with the figures it measured (instances sent, processed, lost...).
Cases go to a JSON-lines file named by ``MEDVERSA_RELIABILITY_LOG`` (set by
``.ci/test``); ``tools/reliability_report.py`` turns that file into the Markdown
table, so the document always says what the last full test run saw.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

CATEGORIES = ("fault", "load", "bad input", "security")


def record_case(category: str, case: str, outcome: str, **figures: object) -> None:
    """Append one passed case; a no-op when no log file is configured."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
    target = os.environ.get("MEDVERSA_RELIABILITY_LOG")
    if not target:
        return
    row = {"category": category, "case": case, "outcome": outcome, "figures": figures,
           "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0], "time": time.time()}
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
