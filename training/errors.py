"""The error a dataset reader raises for a missing or malformed file or record.

It lives apart from :mod:`.records` because the low-level file readers
(:mod:`.nifti`) raise it too, and :mod:`.records` builds on those readers.
"""

from __future__ import annotations

from pathlib import Path


class RecordError(ValueError):
    """A dataset file or record is missing or malformed; the message names both."""

    def __init__(self, path: Path | str, record: str | int | None, problem: str) -> None:
        where = f"{path}" + (f", record {record}" if record is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.record = record
