"""Readers for ``../shared/data/medinterp-mini`` (its README documents the layout).

Each folder maps to the records the demo model trains and is evaluated on:

- ``cxr-organs`` (JSRT + SCR): chest organ segmentation (left lung, right lung, heart).
- ``cxr-notes`` (COVID-19 image data collection): report generation with the clinical
  notes as text, lung boxes (anatomy detection), V7 lung masks (both lungs as "lungs").
- ``iu-reports``: report texts without images (language-side training).
- ``derm`` (PH2, ISIC 2017): skin lesion classification and segmentation.
- ``ct``: abdominal organ segmentation on one CT with TotalSegmentator labels.

Splits come from each folder's ``split.csv``; :func:`read_all` takes the split
wanted, and nothing here ever mixes ``holdout`` into ``train``.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from medversa.inference import ClinicalContext, Modality

from ..records import (
    ClassificationRecord,
    DetectionRecord,
    ImageFile,
    LabelVolumeMask,
    MaskFile,
    Record,
    RecordError,
    RegionCaptionRecord,
    ReportRecord,
    SegmentationRecord,
    TextRecord,
    VolumeFile,
    VQARecord,
)

SOURCE = "medinterp-mini"

#: Diagnoses in derm/labels.csv -> the HAM10000 / ISIC 2018 class phrases the model answers with.
DERM_DIAGNOSES = {
    "melanoma": "melanoma",
    "nevus": "melanocytic nevus",
    "common_nevus": "melanocytic nevus",
    "atypical_nevus": "melanocytic nevus",
    "seborrheic_keratosis": "benign keratosis",
}

#: Label values in ct/example_ct_organs.nii.gz (SOURCES.md: 1 liver, 2 kidneys, 3 spleen, 4 pancreas).
CT_ORGANS = {"liver": (1,), "kidney": (2,), "spleen": (3,), "pancreas": (4,)}

#: cxr-notes box labels and mask suffixes -> model phrases (patient's left/right, as the README says).
CXR_PARTS = {"left_lung": "left lung", "right_lung": "right lung", "heart": "heart"}

CXR_VIEWS = {"PA": "PA", "AP": "AP", "AP Supine": "AP supine", "L": "lateral"}

#: cxr-notes ``finding`` values -> the 33-class vocabulary (None: no finding). The values are the leaves
#: of the COVID-19 image data collection's finding hierarchy; every leaf below is filed there under
#: "Pneumonia/..." (e.g. Pneumonia/Viral/COVID-19, Pneumonia/Bacterial/Streptococcus, Pneumonia/Lipoid),
#: so it maps to "pneumonia". "ARDS" has no class among the 33 and "todo" is unlabelled: such rows
#: get no classification record (a combined value keeps its mapped parts: "COVID-19, ARDS" -> pneumonia).
CXR_NOTES_FINDINGS: dict[str, str | None] = {
    "No Finding": None,
    "Pneumonia": "pneumonia",
    **{leaf: "pneumonia" for leaf in (
        "COVID-19", "SARS", "MERS", "Influenza", "Varicella", "Bacterial", "Streptococcus", "Klebsiella",
        "Legionella", "E.Coli", "Mycoplasma Bacterial Pneumonia", "Pneumocystis", "Lipoid", "Aspiration",
        "Chlamydophila", "Nocardia", "Staphylococcus")},
}

#: Views answered by the closed question "Is this a frontal or a lateral view?".
VIEW_KIND = {"PA": "frontal", "AP": "frontal", "AP Supine": "frontal", "L": "lateral"}


def finding_labels(value: str) -> list[str] | None:
    """The classes a cxr-notes ``finding`` names ([] = no finding); None when no part of it maps."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if parts == ["No Finding"]:
        return []
    labels = [CXR_NOTES_FINDINGS[p] for p in parts if CXR_NOTES_FINDINGS.get(p)]
    return list(dict.fromkeys(labels)) or None


def mask_box(path: Path) -> tuple[float, float, float, float] | None:
    """The pixel box ``(x0, y0, x1, y1)`` around a mask PNG's foreground (None: empty mask)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L")) > 0
    rows, cols = np.nonzero(pixels.any(axis=1))[0], np.nonzero(pixels.any(axis=0))[0]
    if not len(rows):
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise RecordError(path, None, "file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordError(path, None, f"missing column(s) {missing}; has {reader.fieldnames}")
        return list(reader)


def read_splits(folder: Path) -> dict[str, str]:
    """``id -> split`` from ``split.csv``."""
    path = folder / "split.csv"
    splits = {}
    for i, row in enumerate(_rows(path, ("id", "split")), start=2):
        if row["split"] not in ("train", "holdout"):
            raise RecordError(path, i, f"unknown split {row['split']!r}")
        splits[row["id"]] = row["split"]
    return splits


def _file(folder: Path, relative: str, table: Path, record: str) -> Path:
    path = folder / relative
    if not path.is_file():
        raise RecordError(table, record, f"names {relative}, which does not exist")
    return path


def read_cxr_organs(root: Path, split: str, captions: bool = True) -> list[Record]:
    folder = root / "cxr-organs"
    out = []
    for image_id, s in sorted(read_splits(folder).items()):
        if s != split:
            continue
        image = _file(folder, f"images/{image_id}.png", folder / "split.csv", image_id)
        masks = {CXR_PARTS[p]: MaskFile(_file(folder, f"masks/{image_id}_{p}.png", folder / "split.csv", image_id))
                 for p in ("left_lung", "right_lung", "heart")}
        out.append(SegmentationRecord(f"{SOURCE}/cxr-organs", image_id, Modality.CXR, s, ImageFile(image), masks))
        if captions:
            out += _region_captions(f"{SOURCE}/cxr-organs", image_id, s, ImageFile(image),
                                    {name: [mask_box(m.path)] for name, m in masks.items()})
    return out


def _region_captions(source: str, image_id: str, split: str, image: ImageFile,
                     boxes: dict[str, list]) -> list[RegionCaptionRecord]:
    """One caption per structure box: the region's answer names the structure it outlines."""
    from PIL import Image

    with Image.open(image.path) as im:
        width, height = im.size
    return [RegionCaptionRecord(source, f"{image_id}/{name}/{i}", Modality.CXR, split, image, width, height,
                                tuple(box), name)
            for name, found in sorted(boxes.items()) for i, box in enumerate(found) if box is not None]


def clinical_context(row: dict[str, str]) -> ClinicalContext:
    """Age, sex and view of a cxr-notes row: the clinical context its report request carries."""
    age = row.get("age", "").strip()
    return ClinicalContext(age=int(float(age)) if age else None,
                           sex={"M": "male", "F": "female"}.get(row.get("sex", "").strip()),
                           view=CXR_VIEWS.get(row.get("view", "").strip()))


def read_cxr_notes(root: Path, split: str) -> list[Record]:
    """Notes as report text, lung boxes as anatomy detection, V7 lung masks as segmentation of 'lungs'."""
    folder = root / "cxr-notes"
    splits = read_splits(folder)
    meta_path = folder / "metadata.csv"
    boxes_path = folder / "boxes.csv"
    boxes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i, row in enumerate(_rows(boxes_path, ("id", "label", "x0", "y0", "x1", "y1")), start=2):
        if row["label"] not in CXR_PARTS:
            raise RecordError(boxes_path, i, f"unknown box label {row['label']!r}")
        try:
            box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        except ValueError as exc:
            raise RecordError(boxes_path, i, f"non-numeric coordinate ({exc})") from exc
        if not (box[0] < box[2] and box[1] < box[3]):
            raise RecordError(boxes_path, i, f"not a box: {box}")
        boxes[row["id"]][CXR_PARTS[row["label"]]].append(box)
    out: list[Record] = []
    for i, row in enumerate(_rows(meta_path, ("id", "file", "view", "sex", "age", "clinical_notes")), start=2):
        image_id = row["id"]
        if image_id not in splits:
            raise RecordError(meta_path, i, f"id {image_id!r} has no split in split.csv")
        if splits[image_id] != split:
            continue
        image = ImageFile(_file(folder, row["file"], meta_path, image_id))
        name = f"{SOURCE}/cxr-notes"
        notes = " ".join(row["clinical_notes"].split())
        if notes:
            out.append(ReportRecord(name, image_id, Modality.CXR, split, [image], findings=notes,
                                    context=clinical_context(row)))
        labels = finding_labels(row.get("finding", ""))
        if labels is not None:
            out.append(ClassificationRecord(name, image_id, Modality.CXR, split, image, labels,
                                            context=clinical_context(row)))
            for phrase in ("pneumonia",):
                out.append(VQARecord(name, f"{image_id}/{phrase}", Modality.CXR, split, [image],
                                     f"Is there {phrase} in this chest radiograph?",
                                     "yes" if phrase in labels else "no"))
        view = VIEW_KIND.get(row.get("view", "").strip())
        if view:
            out.append(VQARecord(name, f"{image_id}/view", Modality.CXR, split, [image],
                                 "Is this a frontal or a lateral view?", view))
        if image_id in boxes:
            out += _region_captions(name, image_id, split, image, boxes[image_id])
            from PIL import Image

            with Image.open(image.path) as im:
                width, height = im.size
            out.append(DetectionRecord(name, image_id, Modality.CXR, split, image, width, height,
                                       {k: list(v) for k, v in boxes[image_id].items()},
                                       candidates=("left lung", "right lung"), kind="anatomy"))
        mask = folder / "masks" / f"{image_id}_lungs.png"
        if mask.is_file():
            out.append(SegmentationRecord(name, image_id, Modality.CXR, split, image, {"lungs": MaskFile(mask)}))
    return out


def read_iu_reports(root: Path) -> list[TextRecord]:
    """IU X-ray report texts (no images here): every report is language-side training text."""
    path = root / "iu-reports" / "reports.jsonl"
    if not path.is_file():
        raise RecordError(path, None, "file not found")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(path, i, f"not JSON ({exc})") from exc
        if "uid" not in row:
            raise RecordError(path, i, "no 'uid'")
        findings = " ".join(str(row.get("findings") or "").split())
        impression = " ".join(str(row.get("impression") or "").split())
        if findings or impression:
            out.append(TextRecord("iu-xray", row["uid"], Modality.CXR, "train", findings, impression))
    return out


def read_derm(root: Path, split: str) -> list[Record]:
    folder = root / "derm"
    splits = read_splits(folder)
    table = folder / "labels.csv"
    out: list[Record] = []
    for i, row in enumerate(_rows(table, ("id", "image", "mask", "diagnosis")), start=2):
        image_id = row["id"]
        if image_id not in splits:
            raise RecordError(table, i, f"id {image_id!r} has no split in split.csv")
        if splits[image_id] != split:
            continue
        if row["diagnosis"] not in DERM_DIAGNOSES:
            raise RecordError(table, i, f"unknown diagnosis {row['diagnosis']!r}; known: {sorted(DERM_DIAGNOSES)}")
        image = ImageFile(_file(folder, row["image"], table, image_id))
        name = f"{SOURCE}/derm"
        diagnosis = DERM_DIAGNOSES[row["diagnosis"]]
        out.append(ClassificationRecord(name, image_id, Modality.DERM, split, image, [diagnosis]))
        for phrase in sorted(set(DERM_DIAGNOSES.values())):
            out.append(VQARecord(name, f"{image_id}/{phrase}", Modality.DERM, split, [image],
                                 f"Is this skin lesion a {phrase}?", "yes" if phrase == diagnosis else "no"))
        out.append(SegmentationRecord(name, image_id, Modality.DERM, split, image,
                                      {"skin lesion": MaskFile(_file(folder, row["mask"], table, image_id))}))
    return out


def read_ct(root: Path) -> list[SegmentationRecord]:
    """The one labelled CT: training data (there is no held-out CT in medinterp-mini)."""
    folder = root / "ct"
    image = folder / "example_ct.nii.gz"
    labels = folder / "example_ct_organs.nii.gz"
    for path in (image, labels):
        if not path.is_file():
            raise RecordError(path, None, "file not found")
    masks = {organ: LabelVolumeMask(labels, values) for organ, values in CT_ORGANS.items()}
    return [SegmentationRecord(f"{SOURCE}/ct", "example_ct", Modality.CT, "train", VolumeFile(image), masks)]


def read_all(root: Path, split: str) -> list[Record]:
    """Every record of one split (``train`` also gets the IU texts and the CT)."""
    if split not in ("train", "holdout"):
        raise ValueError(f"medinterp-mini has splits 'train' and 'holdout', not {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise RecordError(root, None, "the medinterp-mini folder does not exist")
    records: list[Record] = [*read_cxr_organs(root, split), *read_cxr_notes(root, split), *read_derm(root, split)]
    if split == "train":
        records += [*read_iu_reports(root), *read_ct(root)]
    return records
