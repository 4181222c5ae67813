"""The external-validation readers: CheXpert test labels, IU X-ray reports and NIH ChestX-ray14 boxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from medversa.inference import ClinicalContext, Modality, render_context
from medversa.training.datasets.chexpert import CANDIDATES, read_chexpert_test
from medversa.training.datasets.iu_xray import read_iu_xray
from medversa.training.datasets.nih_chestxray import read_nih_boxes
from medversa.training.records import RecordError, ReportRecord, TextRecord

from .test_training_datasets import write_csv, write_image

# --- CheXpert ------------------------------------------------------------------------------------
OBSERVATIONS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices"]


def observations(*present: str) -> list[int]:
    return [int(o in present) for o in OBSERVATIONS]


def test_chexpert_test_labels_per_image(tmp_path):
    for name in ("patient64741/study1/view1_frontal.jpg", "patient64742/study1/view1_frontal.jpg"):
        write_image(tmp_path / "test" / name)
    write_csv(tmp_path / "test_labels.csv", ["Path", *OBSERVATIONS], [
        ["test/patient64741/study1/view1_frontal.jpg", *observations("Cardiomegaly", "Edema", "Lung Opacity")],
        ["test/patient64742/study1/view1_frontal.jpg", *observations("Support Devices")],
    ])
    first, second = read_chexpert_test(tmp_path, "test")
    assert first.record_id == "test/patient64741/study1/view1_frontal.jpg"
    assert first.labels == ["lung opacity", "pulmonary edema", "enlarged cardiac silhouette"]
    assert second.labels == [] and second.candidates == CANDIDATES and len(CANDIDATES) == 9
    assert "enlarged cardiac silhouette" in CANDIDATES and first.split == "test"


def test_chexpert_study_groundtruth_lists_the_study_images(tmp_path):
    study = tmp_path / "test" / "patient64741" / "study1"
    write_image(study / "view1_frontal.jpg")
    write_image(study / "view2_lateral.jpg")
    order = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
             "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
             "Pneumothorax", "Support Devices"]
    write_csv(tmp_path / "groundtruth.csv", ["Study", *order],
              [["CheXpert-v1.0/test/patient64741/study1", *[int(o == "Pneumothorax") for o in order]]])
    records = read_chexpert_test(tmp_path)
    assert [r.image.path.name for r in records] == ["view1_frontal.jpg", "view2_lateral.jpg"]
    assert all(r.labels == ["pneumothorax"] for r in records)


def test_chexpert_uncertain_value_names_file_and_line(tmp_path):
    write_image(tmp_path / "test" / "p" / "s" / "v.jpg")
    values = observations("Edema")
    values[OBSERVATIONS.index("Edema")] = -1
    write_csv(tmp_path / "test_labels.csv", ["Path", *OBSERVATIONS], [["test/p/s/v.jpg", *values]])
    with pytest.raises(RecordError, match=r"test_labels\.csv, record 2: Edema is '-1', not 0 or 1"):
        read_chexpert_test(tmp_path)


# --- IU X-ray ------------------------------------------------------------------------------------
def openi_xml(uid: str, findings: str, impression: str, images: list[str]) -> str:
    parents = "".join(f'<parentImage id="{i}"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption>'
                      f"<panel type=\"single\"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel>"
                      "</parentImage>" for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="{uid}"/>'
            f'<pmcId id="{uid[3:]}"/><docSource>CXR</docSource><IUXRId id="{uid[3:]}"/>'
            '<MedlineCitation Owner="Indiana University" Status="supplied by publisher"><Article PubModel="Electronic">'
            "<ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle><Abstract>"
            '<AbstractText Label="COMPARISON">None.</AbstractText>'
            '<AbstractText Label="INDICATION">Positive TB test</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
            f"</Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH>{parents}</eCitation>")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_iu_xray_openi_reports_with_and_without_images(tmp_path):
    write_text(tmp_path / "ecgen-radiology" / "1.xml",
               openi_xml("CXR1", "The cardiac silhouette and mediastinum size\n are within normal limits.",
                         "Normal chest x-XXXX.", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]))
    write_text(tmp_path / "ecgen-radiology" / "2.xml", openi_xml("CXR2", "", "", ["CXR2_IM-0652-1001"]))
    [text] = read_iu_xray(tmp_path, "test")
    assert isinstance(text, TextRecord) and text.record_id == "CXR1"
    assert text.findings == "The cardiac silhouette and mediastinum size are within normal limits."
    for name in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"):
        write_image(tmp_path / "NLMCXR_png" / f"{name}.png")
    [report] = read_iu_xray(tmp_path)
    assert isinstance(report, ReportRecord) and report.impression == "Normal chest x-XXXX."
    assert [p.path.name for p in report.images] == ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"]
    assert report.context == ClinicalContext(indication="Positive TB test", comparison="None.")
    assert render_context(report.context, Modality.CXR) == "Indication: Positive TB test. Comparison: None."


def test_iu_xray_kaggle_csvs_put_the_frontal_view_first(tmp_path):
    write_csv(tmp_path / "indiana_reports.csv",
              ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"],
              [[1, "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
                "The lungs are clear.", "Normal chest x-XXXX."],
               [2, "normal", "normal", "Chest, 2 views", "Preop.", "", "", ""]])
    write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"],
              [[1, "1_IM-0001-3001.dcm.png", "Lateral"], [1, "1_IM-0001-4001.dcm.png", "Frontal"]])
    for name in ("1_IM-0001-3001.dcm.png", "1_IM-0001-4001.dcm.png"):
        write_image(tmp_path / "images" / "images_normalized" / name)
    [report] = read_iu_xray(tmp_path)
    assert report.record_id == "CXR1" and report.findings == "The lungs are clear."
    assert [p.path.name for p in report.images] == ["1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png"]


def test_iu_xray_broken_xml_names_the_report(tmp_path):
    write_text(tmp_path / "ecgen-radiology" / "7.xml", "<eCitation><uId id='CXR7'/>")
    with pytest.raises(RecordError, match=r"7\.xml: not a readable XML report"):
        read_iu_xray(tmp_path)
    write_text(tmp_path / "ecgen-radiology" / "7.xml", openi_xml("CXR7", "Clear.", "Normal.", ["CXR7_IM-1"]))
    (tmp_path / "NLMCXR_png").mkdir()
    with pytest.raises(RecordError) as caught:
        read_iu_xray(tmp_path)
    assert caught.value.path.name == "7.xml" and caught.value.record == "CXR7"


# --- NIH ChestX-ray14 boxes ----------------------------------------------------------------------
BBOX_LIST = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,
00014716_007.png,Atelectasis,686.101694915254,131.543713833209,185.491525423729,313.491525423729,,,
00013118_008.png,Effusion,600,400,200,100
00029817_009.png,Infiltrate,100,100,50,50,,,
"""


def test_nih_boxes_scaled_from_1024_and_limited_to_the_paper_labels(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text(BBOX_LIST)
    write_image(tmp_path / "images" / "00013118_008.png", (1024, 1024))
    write_image(tmp_path / "images_002" / "images" / "00014716_007.png", (512, 512))  # a resized copy
    write_image(tmp_path / "images" / "00029817_009.png", (1024, 1024))
    first, second = read_nih_boxes(tmp_path, "test")
    assert first.record_id == "00013118_008.png" and first.kind == "pathology"
    assert (first.width, first.height) == (1024, 1024)
    assert first.boxes["pleural effusion"] == [(600.0, 400.0, 800.0, 500.0)]
    assert first.candidates == ("atelectasis", "enlarged cardiac silhouette", "pleural effusion", "pneumothorax")
    [box] = second.boxes["atelectasis"]
    assert (second.width, second.height) == (512, 512)
    assert box == pytest.approx((343.05, 65.77, 435.80, 222.52), abs=0.01)


def test_nih_bad_coordinate_names_the_line(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text(BBOX_LIST.replace("686.101694915254", "n/a"))
    with pytest.raises(RecordError, match=r"BBox_List_2017\.csv, record 3: Bbox \[x is 'n/a', not a number"):
        read_nih_boxes(tmp_path)
