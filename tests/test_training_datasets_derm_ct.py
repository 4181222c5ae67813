"""HAM10000 / ISIC 2018 and AbdomenCT-1K readers on fixtures in their published layouts."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medversa.inference import Modality, render_context
from medversa.training.datasets.abdomenct1k import read_abdomenct1k
from medversa.training.datasets.common import hashed_split
from medversa.training.datasets.ham10000 import read_ham10000
from medversa.training.records import (
    ClassificationRecord,
    RecordError,
    SegmentationRecord,
)

from .test_training_datasets import write_csv, write_image, write_mask

HAM_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
TASK3_HEADER = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def lesions_in_both_splits() -> tuple[str, str]:
    """Two lesion ids whose fixed segmentation split is train and test."""
    ids = [f"HAM_{i:07d}" for i in range(200)]
    train = next(i for i in ids if hashed_split(f"ham10000/{i}") == "train")
    test = next(i for i in ids if hashed_split(f"ham10000/{i}") == "test")
    return train, test


@pytest.fixture()
def ham(tmp_path):
    train_lesion, test_lesion = lesions_in_both_splits()
    write_csv(tmp_path / "HAM10000_metadata.csv", HAM_HEADER, [
        [train_lesion, "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern"],
        [test_lesion, "ISIC_0025030", "mel", "histo", "", "unknown", "unknown", "vidir_modern"],
        [train_lesion, "ISIC_0026769", "nv", "follow_up", "45.0", "female", "back", "rosendahl"],
    ])
    write_image(tmp_path / "HAM10000_images_part_1" / "ISIC_0027419.jpg")
    write_image(tmp_path / "HAM10000_images_part_1" / "ISIC_0025030.jpg")
    write_image(tmp_path / "HAM10000_images_part_2" / "ISIC_0026769.jpg")
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:6] = True
    for image_id in ("ISIC_0027419", "ISIC_0025030"):
        write_mask(tmp_path / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png", mask)
    write_csv(tmp_path / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv", TASK3_HEADER,
              [["ISIC_0034524", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    write_image(tmp_path / "ISIC2018_Task3_Test_Input" / "ISIC_0034524.jpg")
    return tmp_path


def test_ham10000_classification_context_and_segmentation_split(ham):
    train = read_ham10000(ham, "train")
    classes = {r.record_id: r for r in train if isinstance(r, ClassificationRecord)}
    assert {k: r.labels for k, r in classes.items()} == {
        "ISIC_0027419": ["benign keratosis"], "ISIC_0025030": ["melanoma"], "ISIC_0026769": ["melanocytic nevus"]}
    assert render_context(classes["ISIC_0027419"].context, Modality.DERM) == "Age: 80. Sex: male. Location: scalp."
    assert render_context(classes["ISIC_0025030"].context, Modality.DERM) == ""
    [segmentation] = [r for r in train if isinstance(r, SegmentationRecord)]
    assert segmentation.record_id == "ISIC_0027419"  # the other masked image's lesion hashes to test
    lesion = segmentation.masks["skin lesion"].load()
    assert lesion.shape == (6, 8) and lesion.sum() == 6 and lesion[2:4, 3:6].all()

    test = {(type(r).__name__, r.record_id) for r in read_ham10000(ham, "test")}
    assert test == {("ClassificationRecord", "ISIC_0034524"), ("SegmentationRecord", "ISIC_0025030")}
    [isic] = [r for r in read_ham10000(ham, "test") if isinstance(r, ClassificationRecord)]
    assert isic.labels == ["vascular lesion"] and isic.split == "test"
    with pytest.raises(RecordError, match="ISIC 2018 task 3 validation ground truth not found"):
        read_ham10000(ham, "validation")


def test_ham10000_malformed_rows_name_file_and_line(ham):
    write_csv(ham / "ISIC2018_Task3_Test_GroundTruth.csv", TASK3_HEADER,
              [["ISIC_0034524", 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    with pytest.raises(RecordError, match=r"ISIC2018_Task3_Test_GroundTruth\.csv, record 2: expected exactly one"):
        read_ham10000(ham, "test")
    write_csv(ham / "HAM10000_metadata.csv", HAM_HEADER,
              [["HAM_1", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "x"],
               ["HAM_2", "ISIC_0025030", "melanoma", "histo", "", "male", "scalp", "x"]])
    with pytest.raises(RecordError, match=r"HAM10000_metadata\.csv, record 3: unknown dx 'melanoma'"):
        read_ham10000(ham, "train")


def write_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def test_abdomenct1k_label_masks_and_fixed_split(tmp_path):
    labels = np.zeros((4, 5, 3), np.uint8)  # NIfTI [x, y, z]
    labels[0, :, :] = 1
    labels[1, 0, 0] = 2
    labels[2, 1:3, 1] = 3
    labels[3, 4, 2] = 4
    cases = [f"Case_{i:05d}" for i in range(1, 41)]
    for case in cases:
        write_nifti(tmp_path / "Mask" / f"{case}.nii.gz", labels)
        write_nifti(tmp_path / "Image" / f"{case}_0000.nii.gz", np.full((4, 5, 3), -100, np.int16))
    records = read_abdomenct1k(tmp_path)
    assert [r.record_id for r in records] == cases
    validation = read_abdomenct1k(tmp_path, "validation")
    assert 0 < len(validation) < 10 and {r.split for r in validation} == {"validation"}
    assert len(validation) + len(read_abdomenct1k(tmp_path, "train")) == len(cases)
    masks = records[0].masks
    assert {name: int(m.load().sum()) for name, m in masks.items()} == {
        "liver": 15, "kidney": 1, "spleen": 2, "pancreas": 1}
    assert masks["spleen"].load().shape == (3, 5, 4)  # [slices, rows, cols]
    assert records[0].image.load().max() == -100


def test_abdomenct1k_missing_image_names_mask_and_case(tmp_path):
    write_nifti(tmp_path / "Mask" / "Case_00007.nii.gz", np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "Image").mkdir()
    with pytest.raises(RecordError) as caught:
        read_abdomenct1k(tmp_path)
    assert caught.value.path.name == "Case_00007.nii.gz" and caught.value.record == "Case_00007"
    assert "Case_00007_0000.nii.gz" in str(caught.value)
