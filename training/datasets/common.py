"""Small helpers every reader shares: finding files, reading tables, image sizes, box scaling, splits.

Errors are :class:`~medversa.training.errors.RecordError` naming the file and,
for a bad row, its line, so a broken download is fixed at the right place.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..records import PixelBox, RecordError

Row = dict[str, str]


def find_file(folder: Path, names: Iterable[str], what: str) -> Path:
    """The first of ``names`` (relative to ``folder``) that exists; the error lists every name tried."""
    tried = [folder / name for name in names]
    for path in tried:
        if path.is_file():
            return path
    raise RecordError(tried[0], None, f"{what} not found (looked for {', '.join(p.name for p in tried)} "
                                      f"in {folder})")


def require_file(path: Path, table: Path | None = None, record: str | int | None = None) -> Path:
    """``path`` itself, or an error naming the table row that referred to it (or the path when none did)."""
    if path.is_file():
        return path
    if table is None:
        raise RecordError(path, None, "file not found")
    raise RecordError(table, record, f"refers to {path}, which does not exist")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _delimiter(header: str) -> str:
    return "\t" if "\t" in header and "," not in header else ","


def table_columns(path: Path) -> list[str]:
    """The header of a CSV (to tell apart the variants one file name is published in)."""
    if not path.is_file():
        raise RecordError(path, None, "file not found")
    with _open_text(path) as fh:
        header = fh.readline()
    return next(csv.reader([header], delimiter=_delimiter(header)), [])


def read_table(path: Path, required: Iterable[str], delimiter: str | None = None) -> Iterator[tuple[int, Row]]:
    """``(line number, row)`` for each data row of a CSV (``.csv`` or ``.csv.gz``).

    ``delimiter=None`` takes a tab when the header line has one and no comma
    (HAM10000's Dataverse metadata file is tab-separated), a comma otherwise.
    Missing columns raise with the header the file has; a row may leave out
    trailing empty fields (NIH's box list has empty columns after "h]").
    """
    if not path.is_file():
        raise RecordError(path, None, "file not found")
    with _open_text(path) as fh:
        header = fh.readline()
        if delimiter is None:
            delimiter = _delimiter(header)
        columns = next(csv.reader([header], delimiter=delimiter), [])
        required = list(required)
        missing = [c for c in required if c not in columns]
        if missing:
            raise RecordError(path, 1, f"missing column(s) {missing}; the header has {columns}")
        needed = max((columns.index(c) + 1 for c in required), default=0)
        reader = csv.reader(fh, delimiter=delimiter)
        for values in reader:
            line = reader.line_num + 1
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) < needed:
                raise RecordError(path, line, f"{len(values)} fields, the header has {len(columns)}")
            yield line, dict(zip(columns, values + [""] * (len(columns) - len(values)), strict=False))


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or None when the file is absent."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise RecordError(path, None, f"unreadable image ({exc})") from exc


def scale_box(box: PixelBox, source: tuple[int, int], target: tuple[int, int]) -> PixelBox:
    """A box given on a ``source`` (width, height) image, in pixels of the ``target`` image."""
    sx, sy = target[0] / source[0], target[1] / source[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def clip_box(box: PixelBox, width: int, height: int) -> PixelBox | None:
    """The part of ``box`` inside the image, or None when nothing of it is (silver boxes can stray)."""
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(float(width), box[2]), min(float(height), box[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def number(value: str, path: Path, line: int | str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise RecordError(path, line, f"{column} is {value!r}, not a number") from None


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone (a seeded split that survives reordering and subsets)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed_split(key: str, test_fraction: float = 0.1, names: tuple[str, str] = ("train", "test")) -> str:
    """The split of ``key`` when a dataset has none and the paper split at random (9:1)."""
    return names[1] if stable_fraction(key) < test_fraction else names[0]


def check_split(split: str | None, known: Iterable[str], dataset: str) -> None:
    """Reject a split name the dataset does not have (a typo would otherwise read nothing)."""
    known = tuple(known)
    if split is not None and split not in known:
        raise ValueError(f"{dataset} has splits {list(known)}, not {split!r}")


def clean(text: str | None) -> str:
    """Whitespace-normalised text (line breaks and runs of spaces become one space)."""
    return " ".join((text or "").split())
