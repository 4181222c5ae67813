"""Chest ImaGenome 1.0.0 silver scene graphs: anatomy and pathology boxes, image labels, region captions.

Layout (PhysioNet ``chest-imagenome`` 1.0.0, ``silver_dataset/scene_graph.zip`` unzipped)::

    <root>/silver_dataset/scene_graph/<dicom_id>_SceneGraph.json
        {"image_id", "patient_id", "study_id", "viewpoint",
         "objects": [{"bbox_name", "original_x1", "original_y1", "original_x2", "original_y2", ...}],
         "attributes": [{"bbox_name", "phrases": [...], "attributes": [["anatomicalfinding|yes|lung opacity",
                         ...], ...], ...}]}

plus the MIMIC-CXR-JPG images, split and metadata under ``mimic_root`` (see
``mimic_jpg``). ``original_*`` coordinates are pixels of the original image
(metadata Rows x Columns); a resized JPEG copy gets the boxes scaled to it.

Per image (paper, Methods: Chest ImaGenome; the MIMIC-CXR split is kept):

- anatomy detection: the boxes of the 36 anatomies;
- pathology detection: a pathology marked present ("yes") in an anatomy's
  attributes gets that anatomy's box;
- classification: the union of present pathologies (33 classes);
- region captioning: an anatomy's box -> the report sentences linked to it.

Only ``anatomicalfinding`` and ``disease`` labels name pathologies; labels are
mapped onto our phrases by :mod:`medversa.training.vocabulary`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from medversa.inference import Modality

from ..records import (
    ClassificationRecord,
    DetectionRecord,
    ImageFile,
    PixelBox,
    Record,
    RecordError,
    RegionCaptionRecord,
)
from ..vocabulary import (
    CHEST_ANATOMIES,
    CHEST_PATHOLOGIES,
    IMAGENOME_FINDINGS,
    IMAGENOME_MASS_OR_NODULE,
    mass_or_nodule,
)
from . import mimic_jpg
from .common import check_split, clean, clip_box, image_size, scale_box

LOGGER = logging.getLogger(__name__)
SOURCE = "chest-imagenome"
PATHOLOGY_CATEGORIES = ("anatomicalfinding", "disease")
_COORDS = ("original_x1", "original_y1", "original_x2", "original_y2")


def _list(graph: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = graph.get(key, [])
    if not isinstance(value, list):
        raise RecordError(path, key, f"expected a list, got {type(value).__name__}")
    return value


def _box(obj: Any, path: Path, index: int) -> tuple[str, PixelBox]:
    record = f"objects[{index}]"
    if not isinstance(obj, dict) or "bbox_name" not in obj:
        raise RecordError(path, record, "an object without a bbox_name")
    try:
        x0, y0, x1, y1 = (float(obj[key]) for key in _COORDS)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(path, record, f"{obj['bbox_name']!r} has no numeric {'/'.join(_COORDS)} ({exc!r})") from None
    return str(obj["bbox_name"]), (x0, y0, x1, y1)


def _findings(attribute: dict[str, Any], path: Path, index: int) -> list[str]:
    """Our phrase for each pathology label marked present on one anatomy (one list per report sentence)."""
    labels = attribute.get("attributes", [])
    phrases = attribute.get("phrases", [])
    found = []
    for i, phrase_labels in enumerate(labels):
        if not isinstance(phrase_labels, list):
            raise RecordError(path, f"attributes[{index}]", f"attributes[{i}] is not a list of labels")
        sentence = phrases[i] if i < len(phrases) and isinstance(phrases[i], str) else ""
        for label in phrase_labels:
            parts = label.split("|") if isinstance(label, str) else []
            if len(parts) != 3:
                raise RecordError(path, f"attributes[{index}]", f"label {label!r} is not category|polarity|name")
            category, polarity, name = (p.strip() for p in parts)
            if category not in PATHOLOGY_CATEGORIES or polarity != "yes":
                continue
            if name in IMAGENOME_MASS_OR_NODULE:
                found.append(mass_or_nodule(sentence))
            elif name in IMAGENOME_FINDINGS:
                found.append(IMAGENOME_FINDINGS[name])
    return found


def read_scene_graph(path: Path, image: ImageFile, source_size: tuple[int, int], size: tuple[int, int],
                     split: str) -> list[Record]:
    """The records of one scene graph; boxes are scaled from ``source_size`` to ``size`` (width, height)."""
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(path, None, f"not a readable JSON scene graph ({exc})") from exc
    if not isinstance(graph, dict) or "image_id" not in graph:
        raise RecordError(path, None, "no image_id: not a Chest ImaGenome scene graph")
    image_id = str(graph["image_id"])
    if path.name != f"{image_id}_SceneGraph.json":
        raise RecordError(path, image_id, "image_id does not match the file name")
    width, height = size
    anatomy: dict[str, PixelBox] = {}
    for i, obj in enumerate(_list(graph, "objects", path)):
        name, box = _box(obj, path, i)
        clipped = clip_box(scale_box(box, source_size, size), width, height)
        if name not in CHEST_ANATOMIES or clipped is None:
            LOGGER.debug("%s: skipped object %r (unknown name or outside the image)", path, name)
            continue
        anatomy[name] = clipped
    pathology: dict[str, list[PixelBox]] = defaultdict(list)
    present: set[str] = set()
    records: list[Record] = []
    for i, attribute in enumerate(_list(graph, "attributes", path)):
        if not isinstance(attribute, dict):
            raise RecordError(path, f"attributes[{i}]", "not an object")
        name = attribute.get("bbox_name")
        for phrase in _findings(attribute, path, i):
            present.add(phrase)
            if name in anatomy and anatomy[name] not in pathology[phrase]:
                pathology[phrase].append(anatomy[name])
        sentences = [clean(p) for p in attribute.get("phrases", []) if isinstance(p, str) and clean(p)]
        if name in anatomy and sentences:
            records.append(RegionCaptionRecord(SOURCE, f"{image_id}/{name}", Modality.CXR, split, image, width,
                                               height, anatomy[name], " ".join(dict.fromkeys(sentences))))
    labels = [p for p in CHEST_PATHOLOGIES if p in present]
    return [
        DetectionRecord(SOURCE, image_id, Modality.CXR, split, image, width, height,
                        {k: [v] for k, v in anatomy.items()}, CHEST_ANATOMIES, kind="anatomy"),
        DetectionRecord(SOURCE, image_id, Modality.CXR, split, image, width, height,
                        {p: pathology[p] for p in CHEST_PATHOLOGIES if pathology.get(p)}, CHEST_PATHOLOGIES,
                        kind="pathology"),
        ClassificationRecord(SOURCE, image_id, Modality.CXR, split, image, labels),
        *records,
    ]


def read_chest_imagenome(root: Path, split: str | None = None, mimic_root: Path | None = None) -> list[Record]:
    """Records of every scene graph whose image is in ``split`` (MIMIC-CXR's; None: all).

    ``mimic_root``: the MIMIC-CXR-JPG folder (default: ``root``).
    """
    check_split(split, mimic_jpg.SPLITS, "Chest ImaGenome (MIMIC-CXR split)")
    root = Path(root)
    mimic_root = Path(mimic_root) if mimic_root is not None else root
    folder = root / "silver_dataset" / "scene_graph"
    if not folder.is_dir():
        raise RecordError(folder, None, "scene graph folder not found (unzip silver_dataset/scene_graph.zip)")
    images = mimic_jpg.read_images(mimic_root)
    records: list[Record] = []
    for path in sorted(folder.glob("*_SceneGraph.json")):
        dicom_id = path.name.removesuffix("_SceneGraph.json")
        image = images.get(dicom_id)
        if image is None:
            raise RecordError(path, dicom_id, "this image is not in the MIMIC-CXR-JPG split file")
        if split is not None and image.split != split:
            continue
        file = mimic_jpg.image_path(mimic_root, image.subject_id, image.study_id, dicom_id)
        size = image_size(file)
        if size is None:
            raise RecordError(file, dicom_id, f"the image of {path.name} is missing")
        source = (image.width, image.height) if image.width and image.height else size
        records += read_scene_graph(path, ImageFile(file), source, size, image.split)
    return records
