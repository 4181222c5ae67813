"""MS-CXR: radiologist-drawn boxes for report phrases on MIMIC-CXR images (Boecking et al., 2022).

Layout (PhysioNet ``ms-cxr`` 0.1 / 1.1.0)::

    <root>/MS_CXR_Local_Alignment_v1.1.0.csv  dicom_id,category_name,label_text,path,x,y,w,h,
                                              image_width,image_height,split
    <root>/MS_CXR_Local_Alignment_v1.0.0.csv  the same without ``split``

``path`` is MIMIC-CXR-JPG's (``files/p15/p15.../s5.../<dicom_id>.jpg``,
under ``mimic_root``); ``x, y, w, h`` are pixels of an ``image_width`` x
``image_height`` image, scaled to the JPEG actually on disk. One phrase may
have several rows (one per box).

The paper uses MS-CXR for region-of-interest captioning (external): each box
with its phrase is a :class:`RegionCaptionRecord`. Each image also gets a
pathology :class:`DetectionRecord` of its boxes by category; its candidates
are only the categories drawn on it, since MS-CXR does not say what is absent.
Split: v1.1.0's ``split`` column when present, else "test".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from medversa.inference import Modality

from ..records import (
    DetectionRecord,
    ImageFile,
    PixelBox,
    Record,
    RecordError,
    RegionCaptionRecord,
)
from ..vocabulary import MS_CXR_CATEGORIES
from .common import (
    clean,
    find_file,
    image_size,
    number,
    read_table,
    scale_box,
    table_columns,
)

SOURCE = "ms-cxr"
_TABLES = ["MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv"]
_REQUIRED = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")


def read_ms_cxr(root: Path, split: str | None = None, mimic_root: Path | None = None) -> list[Record]:
    """Region captions (one per box) and per-image pathology boxes of ``split`` (None: all).

    ``split`` is a value of v1.1.0's ``split`` column ("test" for v1.0.0); a
    name no row has is an error, not an empty list.
    """
    root = Path(root)
    mimic_root = Path(mimic_root) if mimic_root is not None else root
    table = find_file(root, _TABLES, "MS-CXR annotations")
    has_split = "split" in table_columns(table)
    records: list[Record] = []
    per_image: dict[str, dict[str, list[PixelBox]]] = defaultdict(lambda: defaultdict(list))
    images: dict[str, tuple[ImageFile, tuple[int, int], str]] = {}
    seen: set[str] = set()
    for line, row in read_table(table, _REQUIRED):
        row_split = row["split"].strip() if has_split else "test"
        if not row_split:
            raise RecordError(table, line, "empty split")
        seen.add(row_split)
        if split is not None and row_split != split:
            continue
        category = row["category_name"].strip()
        if category not in MS_CXR_CATEGORIES:
            raise RecordError(table, line, f"unknown category_name {category!r}")
        dicom_id = row["dicom_id"].strip()
        if dicom_id not in images:
            path = mimic_root / row["path"].strip()
            size = image_size(path)
            if size is None:
                raise RecordError(table, line, f"refers to {path}, which does not exist")
            images[dicom_id] = (ImageFile(path), size, row_split)
        image, size, _ = images[dicom_id]
        x, y, w, h, width, height = (number(row[c], table, line, c)
                                     for c in ("x", "y", "w", "h", "image_width", "image_height"))
        if w <= 0 or h <= 0 or width <= 0 or height <= 0:
            raise RecordError(table, line, f"box {w}x{h} on a {width}x{height} image")
        box = scale_box((x, y, x + w, y + h), (int(width), int(height)), size)
        caption = clean(row["label_text"])
        if not caption:
            raise RecordError(table, line, "empty label_text")
        records.append(RegionCaptionRecord(SOURCE, f"{dicom_id}/{line}", Modality.CXR, row_split, image, size[0],
                                           size[1], box, caption))
        per_image[dicom_id][MS_CXR_CATEGORIES[category]].append(box)
    if split is not None and seen and split not in seen:
        raise ValueError(f"{table.name} has splits {sorted(seen)}, not {split!r}")
    for dicom_id, boxes in per_image.items():
        image, size, row_split = images[dicom_id]
        records.append(DetectionRecord(SOURCE, dicom_id, Modality.CXR, row_split, image, size[0], size[1],
                                       {k: list(v) for k, v in boxes.items()}, tuple(boxes), kind="pathology"))
    return records
