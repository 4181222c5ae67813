"""The durable spool: every acknowledged instance is a complete file on disk first.

Write to a temporary file in the same folder, fsync it, rename it into place, fsync
the folder; only then may the SCP answer Success (PS3.4 B.2.3: the SCP has stored
the instance). A crash leaves either the whole file or a temporary one that
start-up removes, never a half file under a final name. Files are named by SOP
Instance UID, so a re-sent instance replaces itself (idempotent).

The SCP receives each C-STORE data set straight into an :class:`IncomingFile` in the
spool's own ``.incoming`` folder (pynetdicom's chunked receive), never into memory or the
system's temporary folder: the data set goes to the disk whose fill the node watches, at
most ``limit`` bytes of it, and becomes a spooled instance by a rename on that same disk
(:meth:`Spool.commit`). A study's spooled bytes are counted so that one study cannot take
more than its configured share (:class:`StudyFull`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TEMP_SUFFIX = ".partial"
#: Folder of the spool that data sets are received into (same disk as the spool; start-up empties it).
INCOMING = ".incoming"


class SpoolFull(OSError):
    """No space left for an instance (answer Out of Resources, 0xA700)."""


class StudyFull(Exception):
    """An instance would take its study past the configured total (answer Out of Resources, 0xA700)."""


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


class IncomingFile:
    """Where pynetdicom writes one C-STORE data set as its fragments arrive (the file object its
    chunked receive expects: ``name``, ``write``, ``file.flush``, ``close``).

    At most ``limit`` bytes reach the disk. Past the limit, or after a write error (a full disk),
    what was written is cut to nothing and the rest of the data set is only counted, so the
    message still completes and the SCP answers with a status instead of losing the association.
    Never raises from ``write``/``flush``: pynetdicom calls them on its network thread.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.name = str(path)
        self.limit = limit
        #: Bytes received so far (written or not).
        self.received = 0
        #: The write error that stopped writing (e.g. ENOSPC), if any.
        self.error: OSError | None = None
        self.file = self  # pynetdicom flushes ``file`` after each fragment
        self._fh: BinaryIO | None = None
        try:
            self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "wb")
        except OSError as exc:  # no inode left, folder gone: the data set is counted, refused at its end
            self.error = exc

    @property
    def over_limit(self) -> bool:
        return self.received > self.limit

    @property
    def complete(self) -> bool:
        """Every received byte is in the file."""
        return self.error is None and not self.over_limit

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if self._fh is not None and self.complete:
            try:
                self._fh.write(data)
            except OSError as exc:
                self._stop(exc)
        elif self._fh is not None:
            self._stop(None)
        return len(data)

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._stop(exc)

    def finish(self) -> None:
        """Make the file durable (flush, fsync, close); a failure is kept in :attr:`error`."""
        if self._fh is None:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._stop(exc)
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as exc:
                self.error = self.error or exc

    def discard(self) -> None:
        """Close and delete the file (idempotent)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def _stop(self, exc: OSError | None) -> None:
        """Write no more; give back the space taken so far (the data set is refused anyway)."""
        if exc is not None and self.error is None:
            self.error = exc
        fh, self._fh = self._fh, None
        try:
            fh.truncate(0)  # drops buffered bytes too, so close() has nothing left to write
            fh.close()
        except (OSError, AttributeError):
            pass


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = root / INCOMING
        self.incoming.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        #: Spooled bytes per study (read from the folder once, then kept up to date).
        self._study_bytes: dict[str, int] = {}
        self._counter = 0

    def open_incoming(self, limit: int) -> IncomingFile:
        """A new :class:`IncomingFile` in the spool's ``.incoming`` folder (a ``.partial`` name:
        start-up removes what a crash left)."""
        with self._lock:
            self._counter += 1
            number = self._counter
        return IncomingFile(self.incoming / f"{os.getpid()}-{number}{TEMP_SUFFIX}", limit)

    def study_bytes(self, study_uid: str) -> int:
        """Bytes the study's spooled instances take."""
        with self._lock:
            return self._study_total(_safe(study_uid, "StudyInstanceUID"))

    def _study_total(self, study_uid: str) -> int:
        if study_uid not in self._study_bytes:
            folder = self.root / study_uid
            self._study_bytes[study_uid] = sum(p.stat().st_size for p in folder.glob("*.dcm")) \
                if folder.is_dir() else 0
        return self._study_bytes[study_uid]

    def commit(self, incoming: IncomingFile, study_uid: str, sop_uid: str, max_study_bytes: int) -> SpooledFile:
        """Move a received, fsynced data set into place under its SOP Instance UID and fsync the folder.

        Raises
        ------
        StudyFull
            When the study's spooled bytes would pass ``max_study_bytes`` (a re-sent instance
            counts only its growth); nothing is moved.
        SpoolFull
            When the disk is full.
        ValueError
            When a UID cannot name a file.
        """
        final = self.path_for(study_uid, sop_uid)
        size = incoming.path.stat().st_size
        with self._lock:
            old = final.stat().st_size if final.exists() else 0
            total = self._study_total(final.parent.name)
            if total - old + size > max_study_bytes:
                raise StudyFull(f"study {final.parent.name} holds {total} bytes; this instance of {size} bytes "
                                f"would pass the limit of {max_study_bytes} bytes")
            self._study_bytes[final.parent.name] = total - old + size
        try:
            new_folder = not final.parent.exists()
            final.parent.mkdir(parents=True, exist_ok=True)
            if new_folder:
                _fsync_dir(self.root)
            os.replace(incoming.path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            with self._lock:
                self._study_bytes.pop(final.parent.name, None)  # recount from the folder next time
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, f"spool disk full writing {sop_uid}") from exc
            raise
        return SpooledFile(final, size, old > 0)

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
            old = final.stat().st_size if final.exists() else None
            os.replace(temp, final)
            _fsync_dir(folder)
            with self._lock:
                if folder.name in self._study_bytes:
                    self._study_bytes[folder.name] += len(data) - (old or 0)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, f"spool disk full writing {sop_uid}") from exc
            raise
        return SpooledFile(final, len(data), old is not None)

    def remove_partials(self) -> int:
        """Delete temporary files a crash left behind (never a final file)."""
        count = 0
        for temp in self.root.rglob(f"*{TEMP_SUFFIX}"):
            temp.unlink(missing_ok=True)
            count += 1
        return count

    def remove_study(self, study_uid: str) -> None:
        uid = _safe(study_uid, "StudyInstanceUID")
        shutil.rmtree(self.root / uid, ignore_errors=True)
        with self._lock:
            self._study_bytes.pop(uid, None)

    def disk_fill(self) -> float:
        """Used share of the space this process can use, as ``df`` shows it: used / (used + available).

        Blocks reserved for root (often 5 %) and ones a file system keeps for itself count as neither,
        so the node's levels agree with the figure an administrator reads in ``df``.
        """
        usage = shutil.disk_usage(self.root)
        usable = usage.used + usage.free
        return usage.used / usable if usable else 0.0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
