"""Result objects on disk: what the jobs write into the results folder before export."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import Dataset


def write_atomic(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` whole or not at all: a temporary ``.partial`` file, fsynced, then
    renamed, so an export never sends (and a crash never leaves) half a result object."""
    temp = path.with_name(f".{path.name}.partial")
    ds.save_as(temp, enforce_file_format=True)
    with open(temp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(temp, path)
