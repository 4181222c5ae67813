"""The durable spool: every acknowledged instance is a complete file on disk first.

Write to a temporary file in the same folder, fsync it, rename it into place, fsync
the folder; only then may the SCP answer Success (PS3.4 B.2.3: the SCP has stored
the instance). A crash leaves either the whole file or a temporary one that
start-up removes, never a half file under a final name. Files are named by SOP
Instance UID, so a re-sent instance replaces itself (idempotent).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TEMP_SUFFIX = ".partial"


class SpoolFull(OSError):
    """No space left for an instance (answer Out of Resources, 0xA700)."""


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    replaced: bool


def _safe(uid: str, what: str) -> str:
    uid = uid.strip().rstrip("\x00")
    if not _UID.match(uid) or len(uid) > 64:
        raise ValueError(f"{what} {uid!r} is not a valid UID")
    return uid


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / _safe(study_uid, "StudyInstanceUID") / f"{_safe(sop_uid, 'SOPInstanceUID')}.dcm"

    def write(self, study_uid: str, sop_uid: str, data: bytes) -> SpooledFile:
        """Store ``data`` durably; raises :class:`SpoolFull` when the disk is full."""
        final = self.path_for(study_uid, sop_uid)
        folder = final.parent
        temp = folder / f".{final.name}.{os.getpid()}.{id(data)}{TEMP_SUFFIX}"
        try:
            new_folder = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            if new_folder:
                _fsync_dir(self.root)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            replaced = final.exists()
            os.replace(temp, final)
            _fsync_dir(folder)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, f"spool disk full writing {sop_uid}") from exc
            raise
        return SpooledFile(final, len(data), replaced)

    def remove_partials(self) -> int:
        """Delete temporary files a crash left behind (never a final file)."""
        count = 0
        for temp in self.root.rglob(f"*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)
            count += 1
        return count

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.root / _safe(study_uid, "StudyInstanceUID"), ignore_errors=True)

    def disk_fill(self) -> float:
        usage = shutil.disk_usage(self.root)
        return (usage.total - usage.free) / usage.total if usage.total else 0.0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
