"""Recognition (series.classify) and study preparation (inputs.prepare_study and friends)."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medversa.dicom_mapping import SeriesKind, StudyInputs, classify, prepare_study
from medversa.dicom_mapping.inputs import longitudinal_images, order_chest_views, pixel_spacing
from medversa.dicom_mapping.references import View
from medversa.dicom_mapping.series import chest_view

from . import dicom_factory as fac
from .conftest import SHARED, need

INPUTS = SHARED / "data" / "medinterp-mini" / "dicom" / "inputs"
SC_CXR = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


# --- real inputs ---------------------------------------------------------------------------------


def test_real_inputs_classify():
    cr = pydicom.dcmread(need(INPUTS / "RG1_J2KI.dcm"), stop_before_pixels=True)
    assert classify(cr)[:2] == (SeriesKind.CHEST_RADIOGRAPH, View.FRONTAL)
    sc = pydicom.dcmread(need(INPUTS / SC_CXR), stop_before_pixels=True)
    kind, view, reason, *_ = classify(sc)
    assert (kind, view) == (SeriesKind.CHEST_RADIOGRAPH, View.FRONTAL)
    assert "Secondary Capture" in reason
    for i in (1, 2, 3):
        ct = pydicom.dcmread(need(INPUTS / f"dcmqi_ct-3slice_0{i}.dcm"), stop_before_pixels=True)
        assert classify(ct)[:2] == (SeriesKind.CT, None)


def test_real_chest_images_prepare():
    for name, shape, spacing in (("RG1_J2KI.dcm", (1955, 1841), None),  # PixelSpacing is 0\0 there
                                 (SC_CXR, (1024, 1024), (0.168, 0.168))):
        study = prepare_study([pydicom.dcmread(need(INPUTS / name))])
        assert not study.skipped
        (img,) = study.images
        assert img.pixels.shape == shape and img.pixels.dtype == np.uint8
        assert (img.ref.rows, img.ref.cols) == shape
        assert img.ref.frame is None and img.view == View.FRONTAL
        assert img.ref.pixel_spacing == (pytest.approx(spacing) if spacing else None)
        assert img.ref.modality == "CR"


def test_real_ct_study_prepares_volume():
    files = [need(INPUTS / f"dcmqi_ct-3slice_0{i}.dcm") for i in (2, 3, 1)]
    study = prepare_study([pydicom.dcmread(f) for f in files])
    assert not study.images and not study.skipped
    (vol,) = study.volumes
    assert vol.hu.shape == (3, 512, 512) and vol.kind == SeriesKind.CT
    assert study.study_instance_uid == vol.ref.study_instance_uid


# --- classification ----------------------------------------------------------------------------


def test_dermoscopy_rgb():
    ds = fac.make_vl_photo(32, 40)
    assert classify(ds)[:2] == (SeriesKind.DERMOSCOPY, None)
    study = prepare_study([ds])
    (img,) = study.images
    assert img.kind == SeriesKind.DERMOSCOPY and img.view is None
    assert img.pixels.shape == (32, 40, 3)
    assert img.ref.modality == "XC" and img.ref.sop_class_uid == fac.VL_PHOTOGRAPHIC


def test_skin_by_description_and_non_skin_photo():
    ds = fac.make_vl_photo(body_part=None, modality="OT", sop_class_uid=fac.SECONDARY_CAPTURE,
                           SeriesDescription="Dermoscopy left forearm")
    assert classify(ds)[0] == SeriesKind.DERMOSCOPY
    eye = fac.make_vl_photo(body_part="EYE")
    kind, _, reason, *_ = classify(eye)
    assert kind is None and "not of skin" in reason and "EYE" in reason


def test_lateral_from_series_description():
    ds = fac.make_cr(view_position=None, SeriesDescription="LAT")
    kind, view, reason, *_ = classify(ds)
    assert (kind, view) == (SeriesKind.CHEST_RADIOGRAPH, View.LATERAL)
    assert "SeriesDescription" in reason


def test_view_fallback_rule():
    square = fac.make_cr(48, 48, view_position=None)
    assert chest_view(square)[0] == View.FRONTAL
    portrait = fac.make_cr(60, 48, view_position=None)
    assert chest_view(portrait)[0] == View.FRONTAL
    landscape = fac.make_cr(40, 60, view_position=None)
    assert chest_view(landscape)[0] is None
    both = fac.make_cr(40, 60, view_position=None, SeriesDescription="Chest PA and LAT")
    assert chest_view(both)[0] is None  # a text naming both projections decides nothing


def test_view_position_and_view_code():
    assert classify(fac.make_cr(view_position="LL"))[1] == View.LATERAL
    assert classify(fac.make_cr(view_position="AP"))[1] == View.FRONTAL
    ds = fac.make_cr(view_position=None, sop_class_uid=fac.DX_PRESENTATION, modality="DX")
    ds.ViewCodeSequence = [_code("399067008", "SCT", "lateral")]
    assert classify(ds)[:2] == (SeriesKind.CHEST_RADIOGRAPH, View.LATERAL)


def test_the_prompts_view_comes_from_the_view_code_sequence_when_view_position_is_missing():
    """A DX without View Position still tells the model its projection (context as training wrote it):
    the model before `demo-context` read a radiograph with no View as a skin lesion."""
    from medversa.dicom_mapping.header_context import projection

    def dx(code: str, scheme: str, meaning: str) -> Dataset:
        ds = fac.make_cr(view_position=None, sop_class_uid=fac.DX_PRESENTATION, modality="DX")
        ds.ViewCodeSequence = [_code(code, scheme, meaning)]
        return ds

    assert projection(dx("272479007", "SCT", "postero-anterior")) == "PA"
    assert projection(dx("R-40888", "SRT", "postero-anterior")) == "PA"
    assert projection(dx("399348003", "SCT", "antero-posterior")) == "AP"
    assert projection(dx("399173006", "SCT", "left lateral")) == "lateral"
    assert projection(dx("99LOCAL", "99X", "ANTERO-POSTERIOR")) == "AP"  # an unlisted code, by its meaning
    assert projection(dx("399135007", "SCT", "left anterior oblique")) is None  # a view training never named
    assert [i.projection for i in prepare_study([dx("272479007", "SCT", "postero-anterior")]).images] == ["PA"]
    both = fac.make_cr(view_position="AP")
    both.ViewCodeSequence = [_code("272479007", "SCT", "postero-anterior")]
    assert projection(both) == "AP"  # View Position, where present, decides


def test_one_view_code_rule_for_the_classifier_and_the_prompt():
    """Local codes are read by their meaning, the same way for the series classifier and the prompt:
    before, "lateral projection" was classified lateral but gave no View, and a local
    "postero-anterior" gave a View but no classification."""
    from medversa.dicom_mapping.header_context import projection
    from medversa.dicom_mapping.series import coded_projection

    def dx(meaning: str, code: str = "99LOCAL", view_position: str | None = None) -> Dataset:
        ds = fac.make_cr(40, 60, view_position=view_position, sop_class_uid=fac.DX_PRESENTATION, modality="DX")
        ds.ViewCodeSequence = [_code(code, "99X" if code == "99LOCAL" else "SCT", meaning)]
        return ds  # landscape: the aspect fallback cannot decide for the code

    cases = {"lateral projection": ("lateral", View.LATERAL), "Postero-anterior": ("PA", View.FRONTAL),
             "POSTEROANTERIOR": ("PA", View.FRONTAL), "antero-posterior": ("AP", View.FRONTAL),
             "frontal": (None, View.FRONTAL), "medial-lateral": (None, None), "latero-medial": (None, None),
             "lateral oblique": (None, None), "left lateral decubitus": (None, None), "axial": (None, None)}
    for meaning, (prompt_view, classified) in cases.items():
        assert projection(dx(meaning)) == prompt_view, meaning
        assert chest_view(dx(meaning))[0] == classified, meaning
    assert coded_projection("399033003", "") == "frontal"  # CID 4010 "frontal", by code alone
    assert chest_view(dx("", code="399033003"))[0] == View.FRONTAL
    assert projection(dx("", code="399033003")) is None  # training names PA or AP, never "frontal"
    for decubitus in ("LLD", "RLD"):  # a frontal projection lying on one side: no View, never "lateral"
        assert projection(fac.make_cr(view_position=decubitus)) is None


def test_decubitus_films_are_not_read():
    """A decubitus film lies across the image; the model outlined lungs and heart on the wrong anatomy
    of one, so it is skipped with a reason, and the study's upright film is still read."""
    from medversa.dicom_mapping.series import decubitus_evidence

    def orientation_modifier(meaning: str) -> Dataset:
        ds = fac.make_cr(view_position="AP")
        orientation = Dataset()
        orientation.PatientOrientationModifierCodeSequence = [_code("99DEC", "99X", meaning)]
        ds.PatientOrientationCodeSequence = [orientation]
        return ds

    dx = fac.make_cr(view_position=None, sop_class_uid=fac.DX_PRESENTATION, modality="DX")
    view = _code("399348003", "SCT", "antero-posterior")
    view.ViewModifierCodeSequence = [_code("99DEC", "99X", "dorsal decubitus")]
    dx.ViewCodeSequence = [view]
    decubitus = {"View Position": fac.make_cr(view_position="RLD"),
                 "orientation": orientation_modifier("left lateral decubitus"), "view modifier": dx,
                 "series text": fac.make_cr(view_position=None, SeriesDescription="Chest LLD"),
                 "protocol": fac.make_cr(view_position="AP", ProtocolName="THORAX DECUBITUS")}
    for where, ds in decubitus.items():
        kind, view_, reason, note, _ = classify(ds)
        assert kind is None and view_ is None and "decubitus" in reason, where
        assert note == f"a decubitus film ({decubitus_evidence(ds)})", where
        assert decubitus_evidence(ds) is not None, where
    upright = {"PA": fac.make_cr(view_position="PA"), "supine": orientation_modifier("supine"),
               "study text": fac.make_cr(view_position="PA", StudyDescription="Chest PA and decubitus")}
    for where, ds in upright.items():  # the study's text describes all its films, not this one
        assert classify(ds)[0] == SeriesKind.CHEST_RADIOGRAPH and decubitus_evidence(ds) is None, where
    pa, lld = fac.make_cr(view_position="PA"), fac.make_cr(view_position="LLD")
    lld.StudyInstanceUID = pa.StudyInstanceUID
    study = prepare_study([pa, lld])
    assert [i.ref.sop_instance_uid for i in study.images] == [pa.SOPInstanceUID]
    assert [(s.sop_instance_uid, "ViewPosition LLD" in s.reason) for s in study.skipped] == [(lld.SOPInstanceUID, True)]


def test_films_stored_mirrored_or_turned_are_read_hung_as_the_model_learned():
    """On RG1 stored mirrored (Patient Orientation R\\F) and fed as stored, the model called the
    patient's left lung "right lung": such a film is read after it is hung head up with the patient's
    left on the right (tests/test_film_orientation.py checks the geometry), and the log says so."""
    from medversa.dicom_mapping.series import stored_orientation

    def cr(view_position: str | None, orientation: list[str] | None) -> Dataset:
        ds = fac.make_cr(view_position=view_position)
        if orientation is None:
            del ds.PatientOrientation
        else:
            ds.PatientOrientation = orientation
        return ds

    turned = {("PA", ("R", "F")): "flipped left to right", ("AP", ("RP", "F")): "flipped left to right",
              (None, ("R", "F")): "flipped left to right", ("PA", ("L", "H")): "flipped top to bottom",
              ("PA", ("R", "H")): "turned half a turn", ("PA", ("F", "L")): "transposed",
              ("LL", ("H", "A")): "turned a quarter"}
    for (view_position, orientation), how in turned.items():
        kind, _, reason, *_ = classify(cr(view_position, list(orientation)))
        assert kind == SeriesKind.CHEST_RADIOGRAPH and f"{how}" in reason and "for the model" in reason, reason
    as_stored = {("PA", ("L", "F")), ("AP", ("LA", "FP")), ("LL", ("A", "F")), ("LL", ("P", "F")),
                 ("LL", ("R", "F")), ("PA", None), ("PA", ("L", "")), ("PA", ("L",))}  # absent/incomplete: as stored
    for view_position, orientation in as_stored:
        ds = cr(view_position, None if orientation is None else list(orientation))
        kind, _, reason, *_ = classify(ds)
        assert kind == SeriesKind.CHEST_RADIOGRAPH and "for the model" not in reason, (view_position, orientation)
        assert stored_orientation(ds, chest_view(ds)[0]).is_identity
    mirrored = cr("PA", ["R", "F"])
    (image,) = prepare_study([mirrored]).images
    assert image.orientation.flip_columns and np.array_equal(image.model_pixels(), image.pixels[:, ::-1])


def test_chest_by_description_or_region_and_missing_body_part(caplog):
    ds = fac.make_cr(body_part=None, StudyDescription="XR THORAX 1 VIEW")
    assert classify(ds)[0] == SeriesKind.CHEST_RADIOGRAPH
    ds = fac.make_cr(body_part=None)
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Thoracic structure")]
    assert classify(ds)[0] == SeriesKind.CHEST_RADIOGRAPH
    with caplog.at_level(logging.INFO, logger="medversa.dicom_mapping"):
        kind, _, reason, *_ = classify(fac.make_cr(body_part=None))
    assert kind == SeriesKind.CHEST_RADIOGRAPH and "assumed chest" in reason
    assert any("assumed" in r.getMessage() for r in caplog.records)


def _localizer() -> Dataset:
    ds = fac.make_ct_series(2)[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return ds


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: fac.make_cr(modality="MR", sop_class_uid=fac.MR_IMAGE), "MR"),
        (lambda: fac.base_dataset(fac.COMPREHENSIVE_SR, "SR"), "not an image"),
        (lambda: fac.make_cr(body_part="KNEE"), "KNEE"),
        (lambda: fac.make_cr(body_part="FOO"), "not the chest"),
        (lambda: fac.make_cr(body_part=None, SeriesDescription="Right hand 2 views"), "other than the chest"),
        (_localizer, "localizer"),
    ],
    ids=["mr", "sr", "knee", "unknown-body-part", "hand-by-description", "ct-localizer"],
)
def test_unusable_instances_are_rejected(make, expected):
    kind, view, reason, *_ = classify(make())
    assert kind is None and view is None
    assert expected in reason


def test_classify_never_raises_on_weird_headers():
    assert classify(Dataset())[0] is None
    ds = Dataset()
    ds.Modality = ""
    ds.SOPClassUID = "1.2.3"
    ds.ViewPosition = ""
    ds.Rows = 0
    kind, view, reason, *_ = classify(ds)
    assert kind is None and reason
    ds = fac.make_cr()
    ds.AnatomicRegionSequence = [Dataset()]  # an item without a code
    ds.BodyPartExamined = ""
    assert classify(ds)[0] == SeriesKind.CHEST_RADIOGRAPH


def test_ct_kinds():
    assert classify(fac.make_ct_series(2, body_part="ABDOMENPELVIS")[0])[0] == SeriesKind.ABDOMINAL_CT
    assert classify(fac.make_ct_series(2, body_part="HEAD")[0])[0] == SeriesKind.CT
    ds = fac.make_ct_series(2, body_part=None)[0]
    ds.SeriesDescription = "Liver 3 phase"
    assert classify(ds)[0] == SeriesKind.ABDOMINAL_CT


# --- prepare_study ---------------------------------------------------------------------------------


def test_multi_frame_gives_one_image_per_frame():
    stack = fac.chest_pixels(24, 20, frames=4)
    ds = fac.make_cr(pixels=stack, sop_class_uid=fac.MF_GRAYSCALE_WORD_SC, modality="DX",
                     pixel_spacing=None, imager_pixel_spacing=(0.15, 0.15))
    study = prepare_study([ds])
    assert [img.ref.frame for img in study.images] == [1, 2, 3, 4]
    assert all(img.pixels.shape == (24, 20) for img in study.images)
    assert all(img.ref.sop_instance_uid == ds.SOPInstanceUID for img in study.images)
    assert study.images[0].ref.pixel_spacing == (0.15, 0.15)


def test_enhanced_ct_in_a_study():
    ds = fac.make_enhanced_ct(3)
    study = prepare_study([ds])
    (vol,) = study.volumes
    assert vol.kind == SeriesKind.ABDOMINAL_CT and vol.ref.frames == (1, 2, 3)


def test_pixel_spacing_fallbacks():
    assert pixel_spacing(fac.make_cr(pixel_spacing=(0.2, 0.3))) == (0.2, 0.3)
    assert pixel_spacing(fac.make_cr(pixel_spacing=None, imager_pixel_spacing=(0.1, 0.1))) == (0.1, 0.1)
    assert pixel_spacing(fac.make_cr(pixel_spacing=(0, 0), imager_pixel_spacing=(0.1, 0.1))) == (0.1, 0.1)
    assert pixel_spacing(fac.make_cr(pixel_spacing=None)) is None


def test_study_mixes_kinds_orders_and_skips(caplog):
    study_uid = generate_uid()
    lat = fac.make_cr(view_position="LL", study_uid=study_uid, series_number=2, instance_number=1)
    pa = fac.make_cr(view_position="PA", study_uid=study_uid, series_number=1, instance_number=2)
    pa0 = fac.make_cr(view_position="PA", study_uid=study_uid, series_number=1, instance_number=1)
    mr = fac.make_cr(modality="MR", sop_class_uid=fac.MR_IMAGE, study_uid=study_uid)
    sr = fac.base_dataset(fac.COMPREHENSIVE_SR, "SR", study_uid=study_uid)
    good_ct = fac.make_ct_series(4, study_uid=study_uid, series_number=5)
    gap_ct = fac.make_ct_series(5, study_uid=study_uid, series_number=3)
    del gap_ct[2]
    broken = fac.make_cr(study_uid=study_uid)
    broken.PixelData = broken.PixelData[:7]
    with caplog.at_level(logging.INFO, logger="medversa.dicom_mapping"):
        study = prepare_study([lat, mr, *good_ct, pa, sr, *gap_ct, broken, pa0])
    assert [img.ref.sop_instance_uid for img in study.images] == [
        pa0.SOPInstanceUID, pa.SOPInstanceUID, lat.SOPInstanceUID]
    assert [img.view for img in study.images] == [View.FRONTAL, View.FRONTAL, View.LATERAL]
    (vol,) = study.volumes
    assert vol.ref.series_instance_uid == good_ct[0].SeriesInstanceUID
    assert vol.kind == SeriesKind.ABDOMINAL_CT
    reasons = {s.sop_instance_uid or s.series_instance_uid: s.reason for s in study.skipped}
    assert "MR" in reasons[mr.SOPInstanceUID]
    assert "not an image" in reasons[sr.SOPInstanceUID]
    assert "missing slice" in reasons[gap_ct[0].SeriesInstanceUID]
    assert "fewer than" in reasons[broken.SOPInstanceUID]
    # What the SR tells the reader: the films and series the node was sent to read and could not.
    notes = {s.sop_instance_uid or s.series_instance_uid: s.reader_note for s in study.skipped}
    assert notes == {mr.SOPInstanceUID: None, sr.SOPInstanceUID: None,
                     broken.SOPInstanceUID: "a chest radiograph image whose pixel data could not be read",
                     gap_ct[0].SeriesInstanceUID: "an abdominal CT series of 4 image(s) that could not be made "
                                                  "into a volume"}
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert mr.SOPInstanceUID in log and broken.SOPInstanceUID in log
    assert fac.PATIENT_NAME not in log and fac.PATIENT_ID not in log and "Testpatient" not in log


@pytest.mark.parametrize("problem", ["duplicate", "orientation", "tilt", "size"])
def test_failed_ct_series_becomes_skipped(problem):
    series = fac.make_ct_series(4)
    if problem == "duplicate":
        series[2].ImagePositionPatient = series[1].ImagePositionPatient
        expected = "duplicate slice"
    elif problem == "orientation":
        series[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        expected = "mixed orientations"
    elif problem == "tilt":
        series[3].GantryDetectorTilt = 20
        expected = "gantry tilt"
    else:
        fac.set_pixels(series[0], fac.ct_slice_pixels(8, 8, 0), "MONOCHROME2", 12)
        expected = "Rows/Columns"
    study = prepare_study(series)
    assert not study.volumes
    (skip,) = study.skipped
    assert expected in skip.reason and skip.series_instance_uid == series[0].SeriesInstanceUID


def test_one_study_per_call():
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        prepare_study([fac.make_cr(), fac.make_cr()])
    with pytest.raises(ValueError, match="at least one"):
        prepare_study([])


# --- view order and longitudinal pairing ---------------------------------------------------------


def _study(*views: str | None) -> StudyInputs:
    uid = generate_uid()
    datasets = [fac.make_cr(view_position=v, study_uid=uid, instance_number=i + 1,
                            SeriesDescription="" if v else "LAT")
                for i, v in enumerate(views)]
    return prepare_study(datasets)


def test_order_chest_views():
    study = _study("LL", "PA")
    assert [img.view for img in study.images] == [View.LATERAL, View.FRONTAL]
    ordered = order_chest_views(study.images)
    assert [img.view for img in ordered] == [View.FRONTAL, View.LATERAL]


def test_longitudinal_numbers_current_first():
    current = _study("LL", "PA")
    prior = _study("AP")
    prior.images.append(prepare_study([fac.make_vl_photo(study_uid=prior.study_instance_uid)]).images[0])
    images, num_current = longitudinal_images(current, prior)
    assert num_current == 2
    assert [img.ref.study_instance_uid for img in images] == [current.study_instance_uid] * 2 + [
        prior.study_instance_uid]
    assert [img.view for img in images] == [View.FRONTAL, View.LATERAL, View.FRONTAL]
    ids = [f"<img{i}>" for i in range(len(images))]
    assert ids[:num_current] == ["<img0>", "<img1>"] and ids[num_current:] == ["<img2>"]


def test_longitudinal_needs_chest_in_both():
    current = _study("PA")
    skin_only = prepare_study([fac.make_vl_photo()])
    with pytest.raises(ValueError, match="prior study .* has no chest radiograph"):
        longitudinal_images(current, skin_only)
    with pytest.raises(ValueError, match="current study"):
        longitudinal_images(skin_only, current)
