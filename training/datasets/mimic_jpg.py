"""The MIMIC-CXR-JPG 2.0.0 layout that several readers point into (PhysioNet, Johnson et al. 2019).

::

    <root>/mimic-cxr-2.0.0-split.csv(.gz)     dicom_id,study_id,subject_id,split (train/validate/test)
    <root>/mimic-cxr-2.0.0-metadata.csv(.gz)  dicom_id,subject_id,study_id,...,ViewPosition,Rows,Columns,...
    <root>/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

Chest ImaGenome, Medical-Diff-VQA, CheXmask and MS-CXR annotate these images
by ``dicom_id``/``study_id``; the paper keeps MIMIC-CXR's official split for all
of them (Methods, "Datasets").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..records import RecordError
from .common import find_file, read_table

SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL")


@dataclass(frozen=True)
class MimicImage:
    """One MIMIC-CXR image: its ids, split and (when the metadata was read) view and size."""

    dicom_id: str
    subject_id: str
    study_id: str
    split: str
    view: str = ""
    width: int = 0
    height: int = 0


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """``files/p<first two digits>/p<subject>/s<study>/<dicom_id>.jpg`` under ``root``."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _ids(row: dict[str, str], path: Path, line: int) -> tuple[str, str, str]:
    dicom, subject, study = row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip()
    if not dicom or not subject.isdigit() or not study.isdigit():
        raise RecordError(path, line, f"malformed ids: dicom_id={dicom!r}, subject_id={subject!r}, "
                                      f"study_id={study!r}")
    return dicom, subject, study


def read_images(root: Path, with_metadata: bool = True) -> dict[str, MimicImage]:
    """Every image of the official split file, by ``dicom_id`` (with view and size from the metadata)."""
    split_path = find_file(root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"],
                           "MIMIC-CXR-JPG split file")
    images: dict[str, MimicImage] = {}
    for line, row in read_table(split_path, ("dicom_id", "study_id", "subject_id", "split")):
        dicom, subject, study = _ids(row, split_path, line)
        if row["split"] not in SPLITS:
            raise RecordError(split_path, line, f"unknown split {row['split']!r}; expected one of {SPLITS}")
        images[dicom] = MimicImage(dicom, subject, study, row["split"])
    if not with_metadata:
        return images
    meta_path = find_file(root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"],
                          "MIMIC-CXR-JPG metadata file")
    for line, row in read_table(meta_path, ("dicom_id", "ViewPosition", "Rows", "Columns")):
        image = images.get(row["dicom_id"].strip())
        if image is None:
            continue
        try:
            width, height = int(float(row["Columns"])), int(float(row["Rows"]))
        except ValueError:
            raise RecordError(meta_path, line, f"Rows/Columns are {row['Rows']!r}/{row['Columns']!r}") from None
        images[image.dicom_id] = MimicImage(image.dicom_id, image.subject_id, image.study_id, image.split,
                                            row["ViewPosition"].strip().upper(), width, height)
    return images


def study_splits(images: dict[str, MimicImage]) -> dict[str, str]:
    """``study_id -> split`` (MIMIC-CXR splits by patient, so a study's images share one split)."""
    return {image.study_id: image.split for image in images.values()}
