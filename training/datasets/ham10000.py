"""HAM10000 and ISIC 2018 task 3: skin lesion classification (7 classes) and lesion segmentation.

Layout (Harvard Dataverse doi:10.7910/DVN/DBW86T; ISIC 2018 challenge files)::

    <root>/HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]
                                        (Dataverse's extension-less, tab-separated HAM10000_metadata also works)
    <root>/HAM10000_images_part_1/ISIC_0024306.jpg, HAM10000_images_part_2/...
    <root>/HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png
                                        (or ISIC2018_Task1_Training_GroundTruth/ with the same names)
    <root>/ISIC2018_Task3_Test_GroundTruth.csv      image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (one-hot), also
                                                    accepted inside ISIC2018_Task3_Test_GroundTruth/
    <root>/ISIC2018_Task3_Test_Input/ISIC_0034524.jpg   (or ISIC2018_Task3_Test_Images/)
    <root>/ISIC2018_Task3_Validation_GroundTruth.csv + ISIC2018_Task3_Validation_Input/   (optional)

Splits follow the paper (Methods: HAM10000): classification trains on the
10,015 HAM10000 images ("train", which is ISIC 2018 task 3's training set) and
is tested on the ISIC 2018 task 3 test images ("test"; "validation" for its
validation set). Segmentation was split 9:1 at random; here the split is a
fixed hash of ``lesion_id``, so images of one lesion stay together and the
split never changes between runs. Classes are HAM10000's ``dx`` mapped to the
phrases of :mod:`medversa.training.vocabulary`; age, sex and site become the
classification context.
"""

from __future__ import annotations

from pathlib import Path

from medversa.inference import ClinicalContext, Modality

from ..records import (
    ClassificationRecord,
    ImageFile,
    MaskFile,
    Record,
    RecordError,
    SegmentationRecord,
)
from ..vocabulary import HAM10000_DX, ISIC2018_COLUMNS
from .common import Row, check_split, find_file, hashed_split, read_table, table_columns

SOURCE = "ham10000"
SPLITS = ("train", "validation", "test")
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "ham10000_images_part_1",
                 "ham10000_images_part_2")
MASK_FOLDERS = ("HAM10000_segmentations_lesion_tschandl", "ISIC2018_Task1_Training_GroundTruth")
TASK3 = {  # split -> (ground-truth file stem, image folders)
    "validation": ("ISIC2018_Task3_Validation_GroundTruth", ("ISIC2018_Task3_Validation_Input",
                                                             "ISIC2018_Task3_Validation_Images")),
    "test": ("ISIC2018_Task3_Test_GroundTruth", ("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images")),
}


def context(row: Row) -> ClinicalContext:
    """Age, sex and body site as the request context (the published model's classification context)."""
    age = row.get("age", "").strip()
    sex = row.get("sex", "").strip().lower()
    site = row.get("localization", "").strip()
    return ClinicalContext(age=int(float(age)) if age and age.lower() != "nan" else None,
                           sex=sex if sex in ("male", "female") else None,
                           site=site if site and site != "unknown" else None)


def _find_image(root: Path, folders: tuple[str, ...], image_id: str, table: Path, line: int) -> ImageFile:
    for folder in folders:
        path = root / folder / f"{image_id}.jpg"
        if path.is_file():
            return ImageFile(path)
    raise RecordError(table, line, f"image {image_id}.jpg not found in {root} / {' or '.join(folders)}")


def _one_hot(row: Row, path: Path, line: int) -> str:
    hot = []
    for column, phrase in ISIC2018_COLUMNS.items():
        try:
            value = float(row[column])
        except ValueError:
            raise RecordError(path, line, f"{column} is {row[column]!r}, not 0 or 1") from None
        if value == 1.0:
            hot.append(phrase)
        elif value != 0.0:
            raise RecordError(path, line, f"{column} is {row[column]!r}, not 0 or 1")
    if len(hot) != 1:
        raise RecordError(path, line, f"expected exactly one class, got {hot or 'none'}")
    return hot[0]


def _diagnosis(row: Row, path: Path, line: int) -> str:
    dx = row["dx"].strip()
    if dx not in HAM10000_DX:
        raise RecordError(path, line, f"unknown dx {dx!r}; expected one of {sorted(HAM10000_DX)}")
    return HAM10000_DX[dx]


def read_task3(root: Path, split: str) -> list[ClassificationRecord]:
    """ISIC 2018 task 3 validation or test images with their ground truth (one-hot or ``dx`` columns)."""
    stem, folders = TASK3[split]
    table = find_file(root, [f"{stem}.csv", f"{stem}/{stem}.csv"], f"ISIC 2018 task 3 {split} ground truth")
    one_hot = "dx" not in table_columns(table)
    required = ("image", *ISIC2018_COLUMNS) if one_hot else ("image_id", "dx")
    records = []
    for line, row in read_table(table, required):
        image_id = (row["image"] if one_hot else row["image_id"]).strip()
        label = _one_hot(row, table, line) if one_hot else _diagnosis(row, table, line)
        image = _find_image(root, folders, image_id, table, line)
        records.append(ClassificationRecord(SOURCE, image_id, Modality.DERM, split, image, [label],
                                            context=context(row)))
    return records


def read_ham10000(root: Path, split: str | None = None) -> list[Record]:
    """Classification and segmentation records of ``split`` ("train", "validation", "test"; None: all)."""
    check_split(split, SPLITS, "HAM10000 / ISIC 2018")
    root = Path(root)
    table = find_file(root, ["HAM10000_metadata.csv", "HAM10000_metadata"], "HAM10000 metadata")
    records: list[Record] = []
    for line, row in read_table(table, ("lesion_id", "image_id", "dx")):
        image_id, lesion_id = row["image_id"].strip(), row["lesion_id"].strip()
        label = _diagnosis(row, table, line)
        image = _find_image(root, IMAGE_FOLDERS, image_id, table, line)
        if split in (None, "train"):
            records.append(ClassificationRecord(SOURCE, image_id, Modality.DERM, "train", image, [label],
                                                context=context(row)))
        masks = [root / folder / f"{image_id}_segmentation.png" for folder in MASK_FOLDERS]
        mask = next((m for m in masks if m.is_file()), None)
        seg_split = hashed_split(f"ham10000/{lesion_id}")
        if mask is not None and split in (None, seg_split):
            records.append(SegmentationRecord(SOURCE, image_id, Modality.DERM, seg_split, image,
                                              {"skin lesion": MaskFile(mask)}))
    for name, (stem, _) in TASK3.items():
        present = any((root / p).is_file() for p in (f"{stem}.csv", f"{stem}/{stem}.csv"))
        if split == name or (split is None and present):
            records += read_task3(root, name)
    return records
