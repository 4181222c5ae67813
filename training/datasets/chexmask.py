"""CheXmask: left lung, right lung and heart masks (RLE) for public chest X-ray sets (Gaggion et al., 2024).

Layout (PhysioNet ``chexmask-cxr-segmentation-data``; one table per source set)::

    <root>/OriginalResolution/MIMIC-CXR-JPG.csv   dicom_id,Dice RCA (Mean),Dice RCA (Max),Landmarks,
                                                  Left Lung,Right Lung,Heart,Height,Width
    <root>/OriginalResolution/CheXpert.csv        Path,... (Path: train/patient00001/study1/view1_frontal.jpg)

(``.csv.gz`` and tables directly in ``root`` are accepted too.) Masks are
"start length" run-length pairs, 1-based, row-major over ``Height`` x
``Width`` (see ``training/rle.py``); the image must have that size, so the
``Preprocessed`` tables (1024x1024, padded) are rejected when an image says
otherwise. ``min_dice`` drops rows whose RCA quality estimate is below it
(CheXmask suggests 0.7 on ``Dice RCA (Mean)``).

The paper trains on the MIMIC-CXR table (MIMIC-CXR's split; images under
``images_root``, the MIMIC-CXR-JPG folder) and validates externally on
CheXpert's validation images ("valid"; ``images_root`` holds CheXpert's
``train/`` and ``valid/``). Uncompressed tables are read lazily: a record
keeps the row's byte offset, not gigabytes of RLE text.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from pathlib import Path

from medversa.inference import Modality

from ..records import (
    CsvRleMask,
    ImageFile,
    MaskSource,
    RecordError,
    RleMask,
    SegmentationRecord,
)
from ..vocabulary import CHEXMASK_STRUCTURES
from . import mimic_jpg
from .common import check_split, find_file, image_size, number, table_columns

SOURCE = "chexmask"
#: Source table -> the column naming its image.
ID_COLUMNS = {"MIMIC-CXR-JPG": "dicom_id", "CheXpert": "Path"}
CHEXPERT_SPLITS = ("train", "valid")
QUALITY_COLUMNS = ("Dice RCA (Mean)", "Dice RCA (Max)")


def _rows(path: Path) -> Iterator[tuple[int, int, list[str], list[str]]]:
    """``(line, byte offset, header, values)`` of each data row (offsets are of the uncompressed text)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        header = next(csv.reader([fh.readline().decode("utf-8-sig")]), [])
        line = 1
        while True:
            offset = fh.tell()
            raw = fh.readline()
            if not raw:
                return
            line += 1
            text = raw.decode("utf-8")
            if text.strip():
                yield line, offset, header, next(csv.reader([text]))


def _chexpert_image(images_root: Path, value: str) -> tuple[Path, str]:
    parts = Path(value).parts
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    if not parts or parts[0] not in CHEXPERT_SPLITS:
        raise ValueError(f"Path {value!r} is not under train/ or valid/")
    return images_root.joinpath(*parts), parts[0]


def read_chexmask(root: Path, split: str | None = None, source: str = "MIMIC-CXR-JPG",
                  images_root: Path | None = None, min_dice: float | None = 0.7,
                  quality_column: str = "Dice RCA (Mean)") -> list[SegmentationRecord]:
    """Chest organ masks of one source table, restricted to ``split`` and to rows of good quality.

    ``split``: MIMIC-CXR's ("train", "validate", "test") or CheXpert's
    ("train", "valid"); None: all. ``min_dice=None`` keeps every row.
    """
    if source not in ID_COLUMNS:
        raise ValueError(f"CheXmask source {source!r} is not supported; use one of {sorted(ID_COLUMNS)}")
    if quality_column not in QUALITY_COLUMNS:
        raise ValueError(f"quality_column must be one of {QUALITY_COLUMNS}, not {quality_column!r}")
    mimic = source == "MIMIC-CXR-JPG"
    check_split(split, mimic_jpg.SPLITS if mimic else CHEXPERT_SPLITS, f"CheXmask/{source}")
    root = Path(root)
    images_root = Path(images_root) if images_root is not None else root
    names = [f"OriginalResolution/{source}.csv", f"OriginalResolution/{source}.csv.gz", f"{source}.csv",
             f"{source}.csv.gz"]
    table = find_file(root, names, f"CheXmask {source} table")
    lazy = table.suffix != ".gz"
    mimic_images = mimic_jpg.read_images(images_root, with_metadata=False) if mimic else {}
    id_column = ID_COLUMNS[source]
    required = (id_column, quality_column, "Height", "Width", *CHEXMASK_STRUCTURES)
    columns = table_columns(table)
    missing = [c for c in required if c not in columns]
    if missing:
        raise RecordError(table, 1, f"missing column(s) {missing}; the header has {columns}")
    records = []
    for line, offset, header, values in _rows(table):
        if len(values) != len(header):
            raise RecordError(table, line, f"{len(values)} fields, the header has {len(header)}")
        row = dict(zip(header, values, strict=False))
        key = row[id_column].strip()
        if min_dice is not None and number(row[quality_column], table, line, quality_column) < min_dice:
            continue
        if mimic:
            image = mimic_images.get(key)
            if image is None:
                raise RecordError(table, line, f"dicom_id {key!r} is not in the MIMIC-CXR-JPG split file")
            path, row_split = mimic_jpg.image_path(images_root, image.subject_id, image.study_id, key), image.split
        else:
            try:
                path, row_split = _chexpert_image(images_root, key)
            except ValueError as exc:
                raise RecordError(table, line, str(exc)) from None
        if split is not None and row_split != split:
            continue
        height = int(number(row["Height"], table, line, "Height"))
        width = int(number(row["Width"], table, line, "Width"))
        size = image_size(path)
        if size is None:
            raise RecordError(table, line, f"refers to {path}, which does not exist")
        if size != (width, height):
            raise RecordError(table, line, f"masks are {width}x{height} but {path.name} is {size[0]}x{size[1]} "
                                           "(use the OriginalResolution tables)")
        masks: dict[str, MaskSource] = {}
        for column, structure in CHEXMASK_STRUCTURES.items():
            rle = row[column].strip()
            if not rle or rle.lower() == "nan":
                continue
            masks[structure] = (CsvRleMask(table, offset, header.index(column), height, width) if lazy
                                else RleMask(rle, height, width))
        if masks:
            records.append(SegmentationRecord(f"{SOURCE}/{source}", key, Modality.CXR, row_split,
                                              ImageFile(path), masks))
    return records
