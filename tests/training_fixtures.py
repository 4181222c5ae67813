"""A tiny dataset in medinterp-mini's exact layout (its README), written at test time.

Images carry a bright square where the masks and boxes say, so a few training
steps see consistent targets; nothing here is real patient data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _chest(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    img = rng.integers(0, 60, (size, size), dtype=np.uint8)
    masks = {}
    for name, (x0, x1) in {"right_lung": (10, 40), "left_lung": (56, 86), "heart": (40, 60)}.items():
        m = np.zeros((size, size), np.uint8)
        m[20:80, x0:x1] = 255
        masks[name] = m
        img[m > 0] = 180
    return img, masks


def write_medinterp_mini(root: Path, n: int = 6, seed: int = 0) -> Path:
    """``n`` images per folder, the last third in holdout; IU texts; one small CT."""
    rng = np.random.default_rng(seed)
    split = ["train" if i < n - max(1, n // 3) else "holdout" for i in range(n)]
    # cxr-organs
    folder = root / "cxr-organs"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "split.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split"])
        for i in range(n):
            image_id = f"JPCLN{i:03d}"
            img, masks = _chest(rng)
            _png(folder / "images" / f"{image_id}.png", img)
            for part, m in masks.items():
                _png(folder / "masks" / f"{image_id}_{part}.png", m)
            w.writerow([image_id, split[i]])
    # cxr-notes
    folder = root / "cxr-notes"
    folder.mkdir(parents=True, exist_ok=True)
    meta = [["id", "file", "view", "sex", "age", "finding", "clinical_notes", "license", "source_url", "patientid",
             "orig_filename"]]
    boxes = [["id", "label", "x0", "y0", "x1", "y1"]]
    splits = [["id", "split"]]
    for i in range(n):
        image_id = f"{i:06d}"
        img, masks = _chest(rng)
        _png(folder / "images" / f"{image_id}.png", img)
        _png(folder / "masks" / f"{image_id}_lungs.png", np.maximum(masks["left_lung"], masks["right_lung"]))
        meta.append([image_id, f"images/{image_id}.png", "PA", "M" if i % 2 else "F", str(40 + i), "Pneumonia",
                     "Patchy opacity in the right lower lobe. No effusion.", "CC BY", "", str(i), f"{image_id}.png"])
        boxes.append([image_id, "right_lung", "10", "20", "40", "80"])
        boxes.append([image_id, "left_lung", "56", "20", "86", "80"])
        splits.append([image_id, split[i]])
    for name, rows in (("metadata.csv", meta), ("boxes.csv", boxes), ("split.csv", splits)):
        with (folder / name).open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    # derm
    folder = root / "derm"
    folder.mkdir(parents=True, exist_ok=True)
    labels = [["id", "source", "image", "mask", "diagnosis", "license"]]
    splits = [["id", "split"]]
    diagnoses = ["melanoma", "common_nevus", "seborrheic_keratosis"]
    for i in range(n):
        image_id = f"IMD{i:03d}"
        img = rng.integers(150, 220, (64, 80, 3), dtype=np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        mask[16:48, 20:60] = 255
        img[mask > 0] = (90, 50, 30)
        _png(folder / "images" / f"{image_id}.jpg", img)
        _png(folder / "masks" / f"{image_id}_lesion.png", mask)
        labels.append([image_id, "PH2", f"images/{image_id}.jpg", f"masks/{image_id}_lesion.png",
                       diagnoses[i % 3], "research use"])
        splits.append([image_id, split[i]])
    for name, rows in (("labels.csv", labels), ("split.csv", splits)):
        with (folder / name).open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    # iu-reports
    folder = root / "iu-reports"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "reports.jsonl").open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"uid": f"CXR{i}", "findings": "The lungs are clear. Heart size is normal.",
                                 "impression": "No acute cardiopulmonary disease.", "image_ids": []}) + "\n")
    # ct
    import nibabel as nib

    folder = root / "ct"
    folder.mkdir(parents=True, exist_ok=True)
    hu = rng.normal(-500, 200, (32, 32, 16)).astype(np.float32)
    lab = np.zeros((32, 32, 16), np.uint8)
    lab[4:14, 4:14, 2:10] = 1
    lab[18:24, 18:24, 4:8] = 2
    lab[4:10, 20:28, 3:9] = 3
    lab[20:26, 4:10, 5:7] = 4
    hu[lab > 0] = 60
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(folder / "example_ct.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(folder / "example_ct_organs.nii.gz"))
    return root
