"""SR, SEG, presentation states, burned-in SC and KOS: valid (dciodvfy), readable (highdicom), faithful."""

import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from medversa.dicom_mapping import AlgorithmInfo, TaskResult, prepare_study
from medversa.dicom_mapping.codes import SKIN_LESION_CLASSES
from medversa.dicom_mapping.ko import build_key_objects
from medversa.dicom_mapping.pr import build_presentation_state
from medversa.dicom_mapping.sc import build_secondary_capture
from medversa.dicom_mapping.seg import build_segmentation
from medversa.dicom_mapping.sr import SegReference, build_sr, words_beyond
from medversa.inference import Answer, Box, Mask2D, Task

from . import dicom_factory as f
from .dicom_tools import assert_valid, need_tool

ALG = AlgorithmInfo(model_id="0123456789abcdef" * 4)


@pytest.fixture()
def cxr():
    ds = f.make_cr(96, 80, pixel_spacing=(0.5, 0.4))
    image = prepare_study([ds]).images[0]
    return ds, image


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_seg_round_trip_2d_is_pixel_exact_and_omits_empty_masks(cxr, tmp_path):
    ds, image = cxr
    lung = _disc((96, 80), (40, 30), 15)
    heart = _disc((96, 80), (60, 50), 10)
    seg = build_segmentation([ds], [("left lung", lung), ("heart", heart), ("right lung", np.zeros_like(lung))],
                             image.ref, ALG, hd.UID(), hd.UID())
    path = assert_valid(seg.dataset, tmp_path, "seg")
    assert [s.label for s in seg.segments] == ["left lung", "heart"]
    back = hd.seg.segread(path)
    pixels = back.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1, 2])
    assert np.array_equal(pixels[0, ..., 0], lung) and np.array_equal(pixels[0, ..., 1], heart)
    desc = back.get_segment_description(1)
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert desc.segmented_property_type.value == "44029006"
    assert back.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"


def test_multiframe_source_without_frame_of_reference_gets_no_seg_but_a_logged_reason(caplog):
    frames = f.chest_pixels(40, 40, frames=3)
    ds = f.make_cr(pixels=frames, sop_class_uid=f.MF_GRAYSCALE_WORD_SC, modality="CR")
    second = next(i for i in prepare_study([ds]).images if i.ref.frame == 2)
    heart = _disc((40, 40), (20, 20), 8)
    assert build_segmentation([ds], [("heart", heart)], second.ref, ALG, hd.UID(), hd.UID()) is None
    assert "multi-frame source without a frame of reference" in caplog.text


def test_seg_round_trip_3d_on_the_right_source_slices(tmp_path):
    series = f.make_ct_series(6, 2.0, rows=24, cols=20)
    volume = prepare_study(list(reversed(series))).volumes[0]  # arrival order must not matter
    mask = np.zeros(volume.hu.shape, bool)
    mask[2:5, 5:15, 4:12] = True
    sources = [next(d for d in series if d.SOPInstanceUID == uid) for uid in volume.ref.sop_instance_uids]
    seg = build_segmentation(sources, [("liver", mask)], volume.ref, ALG, hd.UID(), hd.UID())
    path = assert_valid(seg.dataset, tmp_path, "seg3d")
    back = hd.seg.segread(path)
    pixels = back.get_pixels_by_source_instance(list(volume.ref.sop_instance_uids), segment_numbers=[1])
    assert np.array_equal(pixels[..., 0].astype(bool), mask)
    assert back.FrameOfReferenceUID == series[0].FrameOfReferenceUID


def test_all_empty_masks_write_no_seg(cxr):
    ds, image = cxr
    assert build_segmentation([ds], [("heart", np.zeros((96, 80), bool))], image.ref, ALG, hd.UID(), hd.UID()) is None


def _results(image, lung):
    ref = image.ref
    return [
        TaskResult(Answer("", Task.REPORT_FINDINGS, "The lungs are clear. No effusion."), [ref]),
        TaskResult(Answer("", Task.REPORT_IMPRESSION, "No acute cardiopulmonary process."), [ref]),
        TaskResult(Answer("", Task.PATHOLOGY_DETECTION, "pleural effusion <DET>, pneumothorax <N/A>.",
                          boxes=[Box("pleural effusion", 10.5, 20.0, 60.25, 70.0)], absent=["pneumothorax"]), [ref]),
        TaskResult(Answer("", Task.CHEST_PATHOLOGY_CLASSIFICATION,
                          "The diagnoses are atelectasis and pneumonia."), [ref]),
        TaskResult(Answer("", Task.CHEST_ORGAN_SEGMENTATION, "", masks_2d=[Mask2D("left lung", lung)]), [ref]),
        TaskResult(Answer("", Task.VQA, "Yes, a small one."), [ref], question="Is there an effusion in <img0>?"),
    ]


def test_sr_is_valid_readable_and_carries_every_result(cxr, tmp_path):
    ds, image = cxr
    lung = _disc((96, 80), (40, 30), 15)
    seg = build_segmentation([ds], [("left lung", lung)], image.ref, ALG, hd.UID(), hd.UID())
    results = _results(image, lung)
    sr = build_sr(results, [ds, seg.dataset], ALG, hd.UID(), hd.UID(), {(4, "left lung"): SegReference(seg, image.ref)})
    path = assert_valid(sr, tmp_path, "sr")
    need_tool("dsrdump")
    dump = subprocess.run([need_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "Pleural effusion" in dump.stdout

    back = hd.sr.srread(path)
    assert back.VerificationFlag == "UNVERIFIED" and back.CompletionFlag == "PARTIAL"
    assert "AI-generated" in back.SeriesDescription
    equipment = back.ContributingEquipmentSequence[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert equipment.DeviceUID == ALG.device_uid
    groups = back.content.get_planar_roi_measurement_groups()
    box_group = next(g for g in groups if g.finding_type.value == "60046008")
    region = box_group.roi
    assert region.GraphicType == "POLYLINE"
    assert np.allclose(region.value, [[10.5, 20.0], [60.25, 20.0], [60.25, 70.0], [10.5, 70.0], [10.5, 20.0]])
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    lung_groups = [g for g in groups if g.finding_type.value == "44029006"]
    seg_group = next(g for g in lung_groups if g.reference_type.value in ("121214", "121233"))  # a SEG reference
    area = seg_group.get_measurements()[0]
    assert area.value == pytest.approx(lung.sum() * 0.5 * 0.4, rel=1e-3)
    # Beside it, the same tracked finding as an outline (SCOORD closed POLYLINE) on the source image.
    outline_group = next(g for g in lung_groups if g.reference_type.value == "111030")
    assert outline_group.tracking_uid == seg_group.tracking_uid
    assert outline_group.roi.GraphicType == "POLYLINE" and np.allclose(outline_group.roi.value[0],
                                                                        outline_group.roi.value[-1])
    xs, ys = outline_group.roi.value[:, 0], outline_group.roi.value[:, 1]
    # The disc (centre row 40, column 30, radius 15) covers columns 15-45 and rows 25-55: pixel edges
    # 15..46 and 25..56 in SCOORD image coordinates (origin at the top left pixel's top left corner).
    assert np.allclose([xs.min(), xs.max(), ys.min(), ys.max()], [15, 46, 25, 56], atol=0.5)
    texts = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
             for item in back.ContentSequence[-1].ContentSequence if item.ValueType == "TEXT"}
    assert texts["59776-5"] == "The lungs are clear. No effusion."
    assert texts["19005-8"] == "No acute cardiopulmonary process."
    assert "AI algorithm" in texts["ai-notice"] and texts["question"].startswith("Is there")
    procedure = next(i for i in back.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058")
    # The imaging procedure, from CID 100 as both the current standard and PixelMed's 2019 edition list it.
    assert procedure.ConceptCodeSequence[0].CodeValue == "363679005"


def _all_items(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _all_items(child)


def test_sr_codes_classification_findings_with_their_presence(cxr, tmp_path):
    ds, image = cxr
    sr = build_sr(_results(image, np.zeros((96, 80), bool))[:4], [ds], ALG, hd.UID(), hd.UID())
    back = hd.sr.srread(assert_valid(sr, tmp_path, "sr"))
    evaluations = {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
                   for i in _all_items(back) if i.ValueType == "CODE"}
    assert ("46621007", "52101004") in evaluations   # atelectasis: present
    assert ("233604007", "52101004") in evaluations  # pneumonia: present
    assert ("36118008", "272519000") in evaluations  # pneumothorax: absent (<N/A>)
    # The pleural effusion box is a planar ROI group whose finding type says what was found.
    assert ("121071", "60046008") in evaluations


def test_classification_words_are_kept_only_where_they_say_more_than_the_codes(cxr, tmp_path):
    ds, image = cxr
    bare = TaskResult(Answer("", Task.CHEST_PATHOLOGY_CLASSIFICATION, "pneumonia"), [image.ref])
    back = hd.sr.srread(assert_valid(build_sr([bare], [ds], ALG, hd.UID(), hd.UID()), tmp_path, "sr"))
    items = list(_all_items(back))
    assert ("233604007", "52101004") in {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
                                         for i in items if i.ValueType == "CODE"}  # pneumonia: present
    assert "pneumonia" not in [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert not words_beyond("Pneumonia", ["pneumonia"])
    assert not words_beyond("atelectasis and pneumonia.", ["atelectasis", "pneumonia"])
    assert words_beyond("pneumonia, likely aspiration", ["pneumonia"])
    assert words_beyond("no finding", [])


def test_another_domains_classes_never_reach_a_radiographs_report(cxr, tmp_path, caplog):
    """A chest radiograph answered with skin-lesion classes (the model before `demo-context`, asked
    without View/Sex/Age): no skin lesion reaches the SR, a note says the answer was withheld, the log
    says why; a pathology named beside it is still coded; a note that mentions melanoma stays a report."""
    ds, image = cxr
    wrong = [TaskResult(Answer("", Task.CHEST_PATHOLOGY_CLASSIFICATION, "melanoma"), [image.ref]),
             TaskResult(Answer("", Task.REPORT_FINDINGS, "melanocytic nevus"), [image.ref])]
    with caplog.at_level("WARNING"):
        back = hd.sr.srread(assert_valid(build_sr(wrong, [ds], ALG, hd.UID(), hd.UID()), tmp_path, "wrong"))
    texts = [i.TextValue for i in _all_items(back) if i.ValueType == "TEXT"]
    assert not [t for t in texts if "melano" in t.lower()], texts
    assert "Chest pathology classification: no answer among this task's classes (the model's answer was withheld)" \
        in texts
    assert "No report: the model's answer was not a report of this image (withheld)." in texts
    assert not [i for i in _all_items(back) if i.ValueType == "CODE"
                and i.ConceptCodeSequence[0].CodeValue in {c.value for c in SKIN_LESION_CLASSES.values()}]
    assert "left out of the report" in caplog.text and "withheld from the report" in caplog.text
    mixed = [TaskResult(Answer("", Task.CHEST_PATHOLOGY_CLASSIFICATION, "melanoma and pneumonia"), [image.ref]),
             TaskResult(Answer("", Task.REPORT_FINDINGS, "History of melanoma. New right lower lobe nodule."),
                        [image.ref])]
    back = hd.sr.srread(assert_valid(build_sr(mixed, [ds], ALG, hd.UID(), hd.UID()), tmp_path, "mixed"))
    items = list(_all_items(back))
    assert ("233604007", "52101004") in {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
                                         for i in items if i.ValueType == "CODE"}  # pneumonia: present
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert "History of melanoma. New right lower lobe nodule." in texts
    assert "melanoma and pneumonia" not in texts and not [t for t in texts if "withheld" in t]


def test_device_uid_changes_with_the_model():
    assert AlgorithmInfo(model_id="a").device_uid != AlgorithmInfo(model_id="b").device_uid
    assert AlgorithmInfo(model_id="a").device_uid == AlgorithmInfo(model_id="a").device_uid


def test_longitudinal_sr_references_the_prior_study(tmp_path):
    current = f.make_cr(64, 64)
    prior = f.make_cr(64, 64, PatientID=current.PatientID)
    cur_img, prior_img = prepare_study([current]).images[0], prepare_study([prior]).images[0]
    result = TaskResult(Answer("", Task.LONGITUDINAL_COMPARISON, "The effusion has resolved."),
                        [cur_img.ref, prior_img.ref], prior_study_uid=prior.StudyInstanceUID)
    sr = build_sr([result], [current, prior], ALG, hd.UID(), hd.UID())
    back = hd.sr.srread(assert_valid(sr, tmp_path, "sr"))
    other = [s.StudyInstanceUID for s in back.PertinentOtherEvidenceSequence]
    assert prior.StudyInstanceUID in other
    texts = [i.TextValue for i in _all_items(back) if i.ValueType == "TEXT"]
    assert any(t.startswith("The effusion has resolved.") for t in texts)


def _shapes_answers(rows, cols):
    return [Answer("", Task.PATHOLOGY_DETECTION, "", boxes=[Box("pleural effusion", 10, 12, 50, 40)]),
            Answer("", Task.CHEST_ORGAN_SEGMENTATION, "",
                   masks_2d=[Mask2D("heart", _disc((rows, cols), (60, 50), 10))])]


def test_gsps_draws_each_box_and_outline_and_reads_back(cxr, tmp_path):
    ds, image = cxr
    pr = build_presentation_state(ds, image.ref, _shapes_answers(96, 80), ALG, hd.UID(), hd.UID())
    path = assert_valid(pr, tmp_path, "gsps")
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    annotations = {a.GraphicLayer: a for a in back.GraphicAnnotationSequence}
    box = annotations["MEDVERSA_BOXES"].GraphicObjectSequence[0]
    assert box.GraphicType == "POLYLINE" and box.GraphicAnnotationUnits == "PIXEL"
    assert np.allclose(np.array(box.GraphicData).reshape(-1, 2), [[10, 12], [50, 12], [50, 40], [10, 40], [10, 12]])
    assert annotations["MEDVERSA_BOXES"].TextObjectSequence[0].UnformattedTextValue == "pleural effusion"
    outline = np.array(annotations["MEDVERSA_OUTLINE"].GraphicObjectSequence[0].GraphicData).reshape(-1, 2)
    assert np.all(np.hypot(outline[:, 1] - 60.5, outline[:, 0] - 50.5) < 12)


def test_dcmp2pgm_renders_the_presentation_state_overlay_on_the_box(cxr, tmp_path):
    """dcmp2pgm (dcmtk) applies the GSPS and renders its activated overlay; the lit pixels lie on the box.

    dcmtk 3.6.7's dcmp2pgm does not burn graphic annotations into its output bitmap; it renders the
    activated overlay planes of the presentation state, which it writes as ovl_*.pgm in verbose mode.
    """
    need_tool("dcmp2pgm")
    ds, image = cxr
    answers = [Answer("", Task.PATHOLOGY_DETECTION, "", boxes=[Box("", 10, 12, 50, 40)])]
    pr = build_presentation_state(ds, image.ref, answers, ALG, hd.UID(), hd.UID())
    pr_path = assert_valid(pr, tmp_path, "gsps")
    img_path = tmp_path / "image.dcm"
    ds.save_as(img_path, enforce_file_format=True)
    run = subprocess.run([need_tool("dcmp2pgm"), "-v", "-p", str(pr_path), str(img_path), str(tmp_path / "out.pgm")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    overlay = np.array(Image.open(tmp_path / "ovl_0101.pgm")) > 0
    assert overlay.shape == (96, 80)
    lit = np.argwhere(overlay)  # (row, col)
    on_box = ((np.isin(lit[:, 0], [11, 12, 39, 40]) & (lit[:, 1] >= 9) & (lit[:, 1] <= 51)) |
              (np.isin(lit[:, 1], [9, 10, 49, 50]) & (lit[:, 0] >= 11) & (lit[:, 0] <= 41)))
    assert len(lit) > 100 and on_box.all()


def test_colour_images_get_a_colour_presentation_state(tmp_path):
    ds = f.make_vl_photo(48, 64)
    image = prepare_study([ds]).images[0]
    answers = [Answer("", Task.SKIN_LESION_SEGMENTATION, "",
                      masks_2d=[Mask2D("skin lesion", _disc((48, 64), (24, 32), 10))])]
    pr = build_presentation_state(ds, image.ref, answers, ALG, hd.UID(), hd.UID())
    path = assert_valid(pr, tmp_path, "csps")
    assert pydicom.dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"


def test_burned_in_secondary_capture_draws_the_box_and_references_the_source(cxr, tmp_path):
    ds, image = cxr
    sc = build_secondary_capture(ds, image.ref, image.pixels, _shapes_answers(96, 80), ALG, hd.UID(), hd.UID())
    back = pydicom.dcmread(assert_valid(sc, tmp_path, "sc"))
    assert back.BurnedInAnnotation == "YES" and back.StudyInstanceUID == ds.StudyInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert tuple(back.pixel_array[12, 30]) == (255, 64, 64)  # on the top edge of the box
    assert "AI-generated" in back.SeriesDescription


def test_key_object_selection_references_positive_images_and_the_sr(cxr, tmp_path):
    ds, image = cxr
    sr = build_sr(_results(image, np.zeros((96, 80), bool))[:3], [ds], ALG, hd.UID(), hd.UID())
    ko = build_key_objects([ds], sr, ALG, hd.UID(), hd.UID())
    back = pydicom.dcmread(assert_valid(ko, tmp_path, "ko"))
    refs = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in back.ContentSequence
            if "ReferencedSOPSequence" in item}
    assert {ds.SOPInstanceUID, sr.SOPInstanceUID} <= refs
