"""NIH ChestX-ray14 box annotations: chest pathology detection (external validation in the paper).

Layout (NIH Clinical Center box.com release, or its Kaggle copy)::

    <root>/BBox_List_2017.csv   Image Index,Finding Label,Bbox [x,y,w,h],,,
                                (so the columns read "Bbox [x", "y", "w", "h]"; x, y top-left, w, h size)
    <root>/images/00013118_008.png          (the images_*.tar.gz archives)
    <root>/images_001/images/00013118_008.png ... images_012/   (Kaggle)

Boxes are pixels of the released 1024x1024 PNGs (``OriginalImage[Width,Height]``
in ``Data_Entry_2017.csv`` is the size before NIH's resize, not the box
space); a resized copy of an image gets its boxes scaled to its own size. The
paper evaluates the four labels atelectasis, cardiomegaly, effusion and
pneumothorax (577 boxes); ``findings`` chooses others among
:data:`~medversa.training.vocabulary.NIH_FINDINGS`. One record per image holds
all its boxes; ``candidates`` are the chosen labels' phrases. Split: "test".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from medversa.inference import Modality

from ..records import DetectionRecord, ImageFile, PixelBox, RecordError
from ..vocabulary import NIH_FINDINGS, NIH_PAPER_FINDINGS
from .common import check_split, find_file, image_size, number, read_table, scale_box

SOURCE = "nih-chestxray"
BOX_SPACE = (1024, 1024)
_BOX_COLUMNS = ("Bbox [x", "y", "w", "h]")


def _image(root: Path, name: str) -> Path | None:
    for path in (root / "images" / name, *sorted(root.glob(f"images_*/images/{name}"))):
        if path.is_file():
            return path
    return None


def read_nih_boxes(root: Path, split: str | None = None,
                   findings: tuple[str, ...] = NIH_PAPER_FINDINGS) -> list[DetectionRecord]:
    """Pathology detection records of the box list, restricted to ``findings`` (NIH's label names)."""
    check_split(split, ("test",), "NIH ChestX-ray14 boxes")
    unknown = [f for f in findings if f not in NIH_FINDINGS]
    if unknown:
        raise ValueError(f"NIH findings {unknown} have no phrase; choose among {sorted(NIH_FINDINGS)}")
    root = Path(root)
    table = find_file(root, ["BBox_List_2017.csv"], "NIH box list")
    boxes: dict[str, dict[str, list[PixelBox]]] = defaultdict(lambda: defaultdict(list))
    lines: dict[str, int] = {}
    for line, row in read_table(table, ("Image Index", "Finding Label", *_BOX_COLUMNS)):
        label = row["Finding Label"].strip()
        if label not in NIH_FINDINGS and label != "Infiltrate":
            raise RecordError(table, line, f"unknown Finding Label {label!r}")
        if label not in findings:
            continue
        x, y, w, h = (number(row[c], table, line, c) for c in _BOX_COLUMNS)
        if w <= 0 or h <= 0:
            raise RecordError(table, line, f"box of size {w}x{h}")
        name = row["Image Index"].strip()
        boxes[name][NIH_FINDINGS[label]].append((x, y, x + w, y + h))
        lines.setdefault(name, line)
    candidates = tuple(NIH_FINDINGS[f] for f in findings)
    records = []
    for name in sorted(boxes):
        path = _image(root, name)
        size = image_size(path) if path is not None else None
        if path is None or size is None:
            raise RecordError(table, lines[name], f"image {name} not found under {root}/images or images_*/images")
        scaled = {k: [scale_box(b, BOX_SPACE, size) for b in v] for k, v in boxes[name].items()}
        records.append(DetectionRecord(SOURCE, name, Modality.CXR, "test", ImageFile(path), size[0], size[1],
                                       scaled, candidates, kind="pathology"))
    return records
