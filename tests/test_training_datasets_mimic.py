"""Readers over MIMIC-CXR images: reports, Chest ImaGenome, Medical-Diff-VQA, MS-CXR and CheXmask.

Each test writes a tiny MIMIC-CXR-JPG tree (split and metadata tables, JPEGs
under files/pXX/p<subject>/s<study>/) plus the source's own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medversa.inference import Modality, render_context
from medversa.training.datasets.chest_imagenome import read_chest_imagenome
from medversa.training.datasets.chexmask import read_chexmask
from medversa.training.datasets.medical_diff_vqa import read_medical_diff_vqa
from medversa.training.datasets.mimic_cxr import read_mimic_cxr
from medversa.training.datasets.ms_cxr import read_ms_cxr
from medversa.training.records import (
    ClassificationRecord,
    ComparisonRecord,
    CsvRleMask,
    DetectionRecord,
    RecordError,
    RegionCaptionRecord,
    RleMask,
    VQARecord,
)
from medversa.training.rle import encode_start_length
from medversa.training.vocabulary import CHEST_ANATOMIES, CHEST_PATHOLOGIES

from .test_training_datasets import write_csv, write_image

#: (dicom_id, subject, study, split, ViewPosition, (Columns, Rows) in the metadata)
IMAGES = [
    ("d-pa", "10000032", "50414267", "train", "PA", (16, 12)),
    ("d-lat", "10000032", "50414267", "train", "LATERAL", (16, 12)),
    ("d-axial", "10000032", "50414267", "train", "AP AXIAL", (16, 12)),
    ("d-prior", "10000032", "53189527", "train", "AP", (8, 6)),
    ("d-test", "11000011", "56699142", "test", "PA", (8, 6)),
    ("d-val", "12000012", "57375967", "validate", "PA", (8, 6)),
]


def mimic_tree(root: Path) -> Path:
    """MIMIC-CXR-JPG: split and metadata tables (gzip) and 8x6 JPEGs (the metadata may say larger)."""
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, su, sp] for d, su, st, sp, _, _ in IMAGES])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime"],
              [[d, su, st, "CHEST (PA AND LAT)", v, size[1], size[0], 21800506, "213014.531"]
               for d, su, st, _, v, size in IMAGES])
    for d, su, st, *_ in IMAGES:
        write_image(root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg")
    return root


def write_report(root: Path, subject: str, study: str, text: str) -> None:
    path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- MIMIC-CXR reports ----------------------------------------------------------------------------
@pytest.fixture()
def mimic(tmp_path):
    root = mimic_tree(tmp_path)
    write_report(root, "10000032", "50414267",
                 " WET READ: ___ 10:15 AM\n\n FINAL REPORT\n INDICATION:  Cough.\n\n FINDINGS: \n\n Heart size is"
                 " normal.\n Lungs   are clear.\n\n IMPRESSION: \n\n No acute process.\n")
    write_report(root, "10000032", "53189527", "FINAL REPORT\nIMPRESSION: Stable.\n")
    write_report(root, "11000011", "56699142", "FINDINGS: Small left effusion.\n")
    write_report(root, "12000012", "57375967", "FINAL REPORT\nNo sections here.\n")
    return root


def test_mimic_cxr_reports_sections_views_and_split(mimic):
    records = {r.record_id: r for r in read_mimic_cxr(mimic, "train")}
    assert set(records) == {"50414267", "53189527"}
    study = records["50414267"]
    assert study.findings == "Heart size is normal. Lungs are clear."
    assert study.impression == "No acute process."
    assert render_context(study.context, Modality.CXR) == "Indication: Cough."
    assert [p.path.name for p in study.images] == ["d-pa.jpg", "d-lat.jpg"]  # frontal first, AP AXIAL left out
    assert records["53189527"].findings == "" and records["53189527"].impression == "Stable."
    [test] = read_mimic_cxr(mimic, "test")
    assert (test.record_id, test.split, test.findings) == ("56699142", "test", "Small left effusion.")
    assert read_mimic_cxr(mimic, "validate") == []  # a study without findings or impression is dropped
    assert len(read_mimic_cxr(mimic)) == 3


def test_mimic_cxr_errors_name_the_file_and_record(mimic):
    (mimic / "files" / "p11" / "p11000011" / "s56699142.txt").unlink()
    with pytest.raises(RecordError, match=r"s56699142\.txt.*report of study 56699142 is missing"):
        read_mimic_cxr(mimic, "test")
    write_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [["d-pa", "50414267", "10000032", "train"], ["d-x", "s123", "10000032", "train"]])
    with pytest.raises(RecordError) as caught:
        read_mimic_cxr(mimic, "train")
    assert caught.value.path.name == "mimic-cxr-2.0.0-split.csv.gz" and caught.value.record == 3
    with pytest.raises(ValueError, match="validate"):
        read_mimic_cxr(mimic, "val")


# --- Chest ImaGenome -----------------------------------------------------------------------------
def scene_graph(image_id: str, objects: dict[str, tuple[int, int, int, int]], attributes: list[dict]) -> dict:
    return {
        "image_id": image_id, "viewpoint": "PA", "patient_id": 10000032, "study_id": 50414267,
        "objects": [{"object_id": f"{image_id}_{name}", "bbox_name": name, "x1": 0, "y1": 0, "x2": 1, "y2": 1,
                     "original_x1": b[0], "original_y1": b[1], "original_x2": b[2], "original_y2": b[3],
                     "original_width": b[2] - b[0], "original_height": b[3] - b[1]}
                    for name, b in objects.items()],
        "attributes": attributes, "relationships": [],
    }


def write_graph(root: Path, graph: dict) -> Path:
    path = root / "silver_dataset" / "scene_graph" / f"{graph['image_id']}_SceneGraph.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(graph))
    return path


def attribute(name: str, phrases: list[str], labels: list[list[str]]) -> dict:
    return {"bbox_name": name, "name": name.title(), name: True, "phrases": phrases, "attributes": labels,
            "attributes_ids": [[] for _ in labels], "phrase_IDs": [f"p{i}" for i in range(len(phrases))],
            "sections": ["finding"] * len(phrases)}


@pytest.fixture()
def imagenome(tmp_path):
    root = mimic_tree(tmp_path)
    # d-pa: metadata says 16x12, the JPEG is 8x6, so boxes halve.
    write_graph(root, scene_graph("d-pa", {
        "right lung": (2, 2, 8, 10), "left lung": (8, 2, 14, 10), "cardiac silhouette": (6, 6, 12, 12),
        "not an anatomy": (0, 0, 4, 4),
    }, [
        attribute("right lung", ["Right lower lobe opacity.", "No  pneumothorax."],
                  [["anatomicalfinding|yes|lung opacity", "nlp|yes|abnormal"], ["anatomicalfinding|no|pneumothorax"]]),
        attribute("left lung", ["Small left nodule."],
                  [["anatomicalfinding|yes|mass/nodule (not otherwise specified)"]]),
        attribute("cardiac silhouette", ["The heart is enlarged."],
                  [["anatomicalfinding|yes|enlarged cardiac silhouette", "disease|yes|fluid overload/heart failure"]]),
    ]))
    write_graph(root, scene_graph("d-test", {"right lung": (1, 1, 3, 5)}, []))
    return root


def test_chest_imagenome_boxes_labels_and_captions(imagenome):
    records = read_chest_imagenome(imagenome, "train")
    anatomy, pathology = (r for r in records if isinstance(r, DetectionRecord))
    assert anatomy.kind == "anatomy" and anatomy.candidates == CHEST_ANATOMIES
    assert (anatomy.width, anatomy.height) == (8, 6)
    assert anatomy.boxes == {"right lung": [(1.0, 1.0, 4.0, 5.0)], "left lung": [(4.0, 1.0, 7.0, 5.0)],
                             "cardiac silhouette": [(3.0, 3.0, 6.0, 6.0)]}
    assert pathology.kind == "pathology" and pathology.candidates == CHEST_PATHOLOGIES
    assert pathology.boxes == {"lung opacity": [(1.0, 1.0, 4.0, 5.0)],
                               "enlarged cardiac silhouette": [(3.0, 3.0, 6.0, 6.0)],
                               "nodule": [(4.0, 1.0, 7.0, 5.0)], "heart failure": [(3.0, 3.0, 6.0, 6.0)]}
    [labels] = [r for r in records if isinstance(r, ClassificationRecord)]
    assert labels.labels == ["lung opacity", "enlarged cardiac silhouette", "nodule", "heart failure"]
    captions = {r.record_id: r for r in records if isinstance(r, RegionCaptionRecord)}
    assert captions["d-pa/right lung"].caption == "Right lower lobe opacity. No pneumothorax."
    assert captions["d-pa/right lung"].region == (1.0, 1.0, 4.0, 5.0)
    assert {r.split for r in records} == {"train"}
    [test_labels] = [r for r in read_chest_imagenome(imagenome, "test") if isinstance(r, ClassificationRecord)]
    assert (test_labels.record_id, test_labels.labels) == ("d-test", [])


def test_chest_imagenome_malformed_label_names_graph_and_attribute(imagenome):
    path = write_graph(imagenome, scene_graph("d-prior", {"right lung": (1, 1, 3, 5)},
                                              [attribute("right lung", ["Opacity."], [["anatomicalfinding|yes"]])]))
    with pytest.raises(RecordError) as caught:
        read_chest_imagenome(imagenome, "train")
    assert caught.value.path == path and caught.value.record == "attributes[0]"
    assert "category|polarity|name" in str(caught.value)


# --- Medical-Diff-VQA ----------------------------------------------------------------------------
QUESTION_HEADER = ["", "study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split"]


@pytest.fixture()
def diff_vqa(tmp_path):
    root = mimic_tree(tmp_path)
    write_csv(root / "mimic_all.csv", ["", "subject_id", "study_id", "Atelectasis", "dicom_id", "view", "split",
                                       "study_date", "study_order"],
              [[0, "10000032", "50414267", "", "d-pa", "postero-anterior", "train", 21800506, 2],
               [1, "10000032", "53189527", "1.0", "d-prior", "antero-posterior", "train", 21800401, 1],
               [2, "11000011", "56699142", "", "d-test", "postero-anterior", "test", 21800101, 1]])
    write_csv(root / "mimic_pair_questions.csv", QUESTION_HEADER, [
        [0, 50414267, 10000032, 53189527, "abnormality", "what abnormalities are seen in this image?",
         "atelectasis", "train"],
        [1, 50414267, 10000032, 53189527, "difference", "what has changed compared to the reference image?",
         "the main image is missing the findings of atelectasis than the reference image.", "train"],
        [2, 56699142, 11000011, 56699142, "presence", "is there edema?", "no", "test"],
    ])
    return root


def test_medical_diff_vqa_questions_and_comparisons(diff_vqa):
    vqa, comparison = read_medical_diff_vqa(diff_vqa, "train")
    assert isinstance(vqa, VQARecord) and vqa.record_id == "0"
    assert (vqa.question, vqa.answer) == ("what abnormalities are seen in this image?", "atelectasis")
    assert [p.path.name for p in vqa.images] == ["d-pa.jpg"]
    assert isinstance(comparison, ComparisonRecord)
    assert [p.path.name for p in comparison.current] == ["d-pa.jpg"]
    assert [p.path.name for p in comparison.prior] == ["d-prior.jpg"]
    assert comparison.answer.startswith("the main image is missing")
    [test] = read_medical_diff_vqa(diff_vqa, "test")
    assert (test.record_id, test.split, test.answer) == ("2", "test", "no")


def test_medical_diff_vqa_errors_name_the_question_row(diff_vqa):
    write_csv(diff_vqa / "mimic_pair_questions.csv", QUESTION_HEADER, [
        [0, 50414267, 10000032, 53189527, "abnormality", "what?", "x", "train"],
        [1, 59999999, 10000032, 53189527, "presence", "is there edema?", "no", "train"],
    ])
    with pytest.raises(RecordError, match=r"mimic_pair_questions\.csv, record 3: study_id '59999999' is not in"):
        read_medical_diff_vqa(diff_vqa, "train")


# --- MS-CXR --------------------------------------------------------------------------------------
MS_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height",
             "split"]


def test_ms_cxr_boxes_are_scaled_to_the_jpeg(tmp_path):
    root = mimic_tree(tmp_path)
    path = "files/p10/p10000032/s50414267/d-pa.jpg"
    write_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", MS_HEADER, [
        ["d-pa", "Pleural Effusion", "bilateral  effusions", path, 0, 8, 4, 4, 16, 12, "test"],
        ["d-pa", "Pleural Effusion", "bilateral  effusions", path, 12, 8, 4, 4, 16, 12, "test"],
        ["d-pa", "Cardiomegaly", "enlarged heart", path, 4, 2, 8, 6, 16, 12, "test"],
        ["d-test", "Pneumothorax", "left pneumothorax", "files/p11/p11000011/s56699142/d-test.jpg",
         1, 1, 2, 2, 8, 6, "train"],
    ])
    records = read_ms_cxr(root, "test")
    captions = [r for r in records if isinstance(r, RegionCaptionRecord)]
    assert [(c.caption, c.region) for c in captions] == [
        ("bilateral effusions", (0.0, 4.0, 2.0, 6.0)), ("bilateral effusions", (6.0, 4.0, 8.0, 6.0)),
        ("enlarged heart", (2.0, 1.0, 6.0, 4.0))]
    [detection] = [r for r in records if isinstance(r, DetectionRecord)]
    assert detection.boxes == {"pleural effusion": [(0.0, 4.0, 2.0, 6.0), (6.0, 4.0, 8.0, 6.0)],
                               "enlarged cardiac silhouette": [(2.0, 1.0, 6.0, 4.0)]}
    assert detection.candidates == ("pleural effusion", "enlarged cardiac silhouette")
    assert len(read_ms_cxr(root, "train")) == 2
    with pytest.raises(ValueError, match="has splits"):
        read_ms_cxr(root, "validation")


def test_ms_cxr_unknown_category_names_the_line(tmp_path):
    root = mimic_tree(tmp_path)
    write_csv(root / "MS_CXR_Local_Alignment_v1.0.0.csv", MS_HEADER[:-1],
              [["d-pa", "Fracture", "rib fracture", "files/p10/p10000032/s50414267/d-pa.jpg", 1, 1, 2, 2, 8, 6]])
    with pytest.raises(RecordError, match=r"v1\.0\.0\.csv, record 2: unknown category_name 'Fracture'"):
        read_ms_cxr(root)


# --- CheXmask ------------------------------------------------------------------------------------
CHEXMASK_HEADER = ["dicom_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart",
                   "Height", "Width"]


def organ_masks() -> dict[str, np.ndarray]:
    left, right, heart = (np.zeros((6, 8), bool) for _ in range(3))
    left[1:5, 5:7] = True
    right[1:5, 1:3] = True
    heart[3:5, 3:6] = True
    return {"left lung": left, "right lung": right, "heart": heart}


def chexmask_row(key: str, dice: float, height: int = 6, width: int = 8) -> list[object]:
    m = organ_masks()
    return [key, dice, dice + 0.05, "1,2,3,4", encode_start_length(m["left lung"]),
            encode_start_length(m["right lung"]), encode_start_length(m["heart"]), height, width]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_chexmask_decodes_masks_and_applies_the_quality_threshold(tmp_path, suffix):
    root = mimic_tree(tmp_path)
    write_csv(root / "OriginalResolution" / f"MIMIC-CXR-JPG{suffix}", CHEXMASK_HEADER,
              [chexmask_row("d-pa", 0.91), chexmask_row("d-lat", 0.42), chexmask_row("d-test", 0.88)])
    [record] = read_chexmask(root, "train")
    assert record.record_id == "d-pa" and record.source == "chexmask/MIMIC-CXR-JPG"
    assert isinstance(record.masks["heart"], CsvRleMask if suffix == ".csv" else RleMask)
    for name, expected in organ_masks().items():
        np.testing.assert_array_equal(record.masks[name].load(), expected)
    assert [r.record_id for r in read_chexmask(root, "train", min_dice=None)] == ["d-pa", "d-lat"]
    assert [r.split for r in read_chexmask(root)] == ["train", "test"]


def test_chexmask_rejects_masks_of_another_size(tmp_path):
    root = mimic_tree(tmp_path)
    write_csv(root / "MIMIC-CXR-JPG.csv", CHEXMASK_HEADER, [chexmask_row("d-pa", 0.9, height=1024, width=1024)])
    with pytest.raises(RecordError, match=r"MIMIC-CXR-JPG\.csv, record 2: masks are 1024x1024 but d-pa\.jpg is 8x6"):
        read_chexmask(root, "train")


def test_chexmask_chexpert_validation_table(tmp_path):
    write_image(tmp_path / "valid" / "patient64541" / "study1" / "view1_frontal.jpg")
    write_image(tmp_path / "train" / "patient00001" / "study1" / "view1_frontal.jpg")
    header = ["Path", *CHEXMASK_HEADER[1:]]
    write_csv(tmp_path / "OriginalResolution" / "CheXpert.csv", header,
              [chexmask_row("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", 0.9),
               chexmask_row("train/patient00001/study1/view1_frontal.jpg", 0.9)])
    [record] = read_chexmask(tmp_path, "valid", source="CheXpert")
    assert record.image.path == tmp_path / "valid" / "patient64541" / "study1" / "view1_frontal.jpg"
    np.testing.assert_array_equal(record.masks["left lung"].load(), organ_masks()["left lung"])
    with pytest.raises(ValueError, match="not supported"):
        read_chexmask(tmp_path, source="Padchest")


def test_chexmask_bad_rle_fails_on_load_naming_the_table(tmp_path):
    root = mimic_tree(tmp_path)
    row = chexmask_row("d-pa", 0.9)
    row[CHEXMASK_HEADER.index("Heart")] = "7"  # a start without a length
    table = write_csv(root / "MIMIC-CXR-JPG.csv", CHEXMASK_HEADER, [row])
    [record] = read_chexmask(root, "train")
    record.masks["left lung"].load()
    with pytest.raises(RecordError, match="bad RLE") as caught:
        record.masks["heart"].load()
    assert caught.value.path == table
