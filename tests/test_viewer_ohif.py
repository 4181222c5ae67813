"""OHIF Viewer 3.13.2 in headless Chromium shows every result of a study the node processed.

Orthanc (with its DICOMweb and ServeFolders plugins) holds the study and serves the viewer at
``/ohif`` of the same origin; Chromium (software WebGL) opens each result series as a reader would
(double-click in the study browser) and the test asserts from the screenshot's pixels that
annotation colours are drawn in the viewport where the source image has none, and from the
browser console that OHIF's SR and SEG handling logged no error. The same check on a study without
our results finds nothing, so the check can fail. Screenshots are kept in build/viewer-screenshots.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import highdicom as hd
import pytest

from . import viewer_study
from .browser import Chromium, ConsoleEntry
from .conftest import SHARED
from .ohif import (
    SKIP_TOUR,
    VIEWPORT_BOX,
    annotation_pixels,
    orthanc_viewer_config,
    thumbnail_script,
    viewer_or_skip,
    viewer_url,
)
from .orthanc import orthanc_server
from .viewer_results import REPO, record

VIEWER = "OHIF 3.13.2 (browser)"
SHOTS = REPO / "build" / "viewer-screenshots"
RG1 = SHARED / "data" / "medinterp-mini" / "dicom" / "inputs" / "RG1_J2KI.dcm"
#: Fewest annotation-coloured pixels that count as "drawn" (a 1-pixel outline round a lung is ~1,000).
DRAWN = 300


@pytest.fixture(scope="module")
def viewer():
    return viewer_or_skip()


@pytest.fixture(scope="module")
def pacs(viewer, tiny_analyzer, tmp_path_factory):
    """Orthanc with the processed studies (and a control study without results), serving the viewer."""
    server = orthanc_server(tmp_path_factory, extra_config=orthanc_viewer_config(viewer))
    studies = {"chest": viewer_study.chest_study(tiny_analyzer), "ct": viewer_study.ct_study(tiny_analyzer)}
    if RG1.exists():
        studies["rg1"] = viewer_study.shared_radiograph_study(tiny_analyzer, RG1)
        studies["rg1-zero"] = viewer_study.zero_spacing_radiograph_study(tiny_analyzer, RG1)
    control = copy.deepcopy(studies["chest"].sources[0])
    control.StudyInstanceUID, control.SeriesInstanceUID, control.SOPInstanceUID = hd.UID(), hd.UID(), hd.UID()
    control.file_meta.MediaStorageSOPInstanceUID = control.SOPInstanceUID
    studies["control"] = viewer_study.ProcessedStudy("control", [control], [])
    folder = tmp_path_factory.mktemp("studies")
    for study in studies.values():
        for path in study.write(folder / study.name):
            server.upload(path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield server, studies
    server.stop(kill=True)


def _show(browser: Chromium, server, study_uid: str, modality: str, description: str) -> None:
    """Open a study in OHIF and double-click the series of ``modality`` whose description has ``description``."""
    browser.navigate(server.url + "/system")
    browser.wait_for("document.readyState === 'complete'", 20)
    browser.evaluate(SKIP_TOUR)
    browser.navigate(viewer_url(server.url, study_uid))
    browser.wait_for("document.querySelectorAll('[data-cy=\"series-modality-label\"]').length > 0", 90)
    browser.wait_for(VIEWPORT_BOX, 60)
    time.sleep(3)
    where = browser.evaluate(thumbnail_script(modality, description))
    if where is not None:
        browser.double_click(*where)
        time.sleep(12)


def _errors(browser: Chromium) -> list[ConsoleEntry]:
    # Every console error counts, and every failed request (DICOMweb or the viewer's own files).
    errors = [e for e in browser.console if e.level == "error"]
    return errors + [ConsoleEntry("error", f"HTTP {status} {url}", "network") for status, url in browser.failed]


def _open(server, study_uid: str, modality: str, description: str, name: str) -> tuple[Path | None, int, list]:
    """Open a study, double-click a series; return (screenshot, annotation pixels, console errors)."""
    with Chromium() as browser:
        _show(browser, server, study_uid, modality, description)
        shot = browser.screenshot(SHOTS / f"{name}.png")
        box = browser.evaluate(VIEWPORT_BOX)
        drawn = annotation_pixels(shot, box) if box else 0
        text = browser.evaluate("document.body.innerText")
        return shot, drawn, _errors(browser), text


def _assert_no_errors(errors) -> None:
    assert not errors, "\n".join(f"{e.source}: {e.text[:400]}" for e in errors)


def test_chest_sr_outlines_boxes_and_labels_are_drawn(pacs):
    server, studies = pacs
    study = studies["chest"]
    _, drawn, errors, text = _open(server, study.study_uid, "SR", "MedVersa report (", "chest-sr")
    _assert_no_errors(errors)
    assert drawn > DRAWN, f"only {drawn} annotation pixels in the viewport"
    # The measurement labels: each organ with its area, the detection box with its area.
    for label in ("Left lung", "Right lung", "Heart", "mm2"):
        assert label in text, label
    record("SR TID 1500", VIEWER, "pass", f"outlines, boxes and labels drawn ({drawn} annotation pixels), no error")


#: The centre (x, y) of the first visible button whose text is exactly the given one, or null.
BUTTON = """(() => {{
  const e = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === {text} && b.offsetParent);
  if (!e) return null;
  const r = e.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
}})()"""
#: The centre of the side panel's tab of the measurement panel, or null.
MEASUREMENT_TAB = """(() => {
  const e = [...document.querySelectorAll('[data-cy$="-btn"]')].find(b => /measurement/i.test(b.dataset.cy));
  if (!e) return null;
  const r = e.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})()"""
#: The text of every row of OHIF's measurement panel (its DOM, not the viewport's drawing).
PANEL_ROWS = "[...document.querySelectorAll('[data-cy^=\"measurement-table-row\"]')].map(r => r.innerText)"


#: The text of every label drawn in the viewports (Cornerstone draws them as SVG text).
DRAWN_LABELS = "[...document.querySelectorAll('svg text')].map(t => t.textContent)"


def test_chest_sr_boxes_show_their_finding(pacs):
    """Each detection box of the SR with its finding, on the image and in OHIF's measurement panel.

    On opening the SR, OHIF draws each group's Finding Site: the anatomy box (anatomy detection,
    "left lung") is labelled "Left lung" beside the left lung's outline. A reader who answers OHIF's
    "track measurements?" with Yes gets the boxes in the measurement panel, labelled with their
    Finding ("Pleural effusion", "Left lung") and drawn on the image. OHIF loads a box there only
    from a SCOORD under its area NUM (docs/conformance-statement.md 8.7): without it the panel stays
    empty, and without the anatomy box's Finding Site only the outline is labelled; either fails this.
    (OHIF recomputes a tracked box's statistics from the image; this box touches the image's edge, so
    the panel shows no area for it: the SR viewport before tracking shows the SR's area.)
    """
    server, studies = pacs
    import json

    with Chromium() as browser:
        _show(browser, server, studies["chest"].study_uid, "SR", "MedVersa report (")
        drawn_labels = browser.evaluate(DRAWN_LABELS) or []
        opened = browser.screenshot(SHOTS / "chest-sr-labels.png")
        box = browser.evaluate(VIEWPORT_BOX)
        drawn_opened = annotation_pixels(opened, box) if box else 0
        browser.click(*browser.wait_for(BUTTON.format(text=json.dumps("Yes")), 30))
        time.sleep(10)
        if not browser.evaluate(PANEL_ROWS):  # the side panel is closed or on another tab
            tab = browser.evaluate(MEASUREMENT_TAB)
            assert tab, "OHIF shows no measurement panel tab"
            browser.click(*tab)
            time.sleep(3)
        rows = browser.evaluate(PANEL_ROWS) or []
        shot = browser.screenshot(SHOTS / "chest-sr-tracked.png")
        box = browser.evaluate(VIEWPORT_BOX)
        drawn = annotation_pixels(shot, box) if box else 0
        errors = _errors(browser)
    _assert_no_errors(errors)
    left_lung = [label for label in drawn_labels if "Left lung" in label]
    assert len(left_lung) >= 2, f"the anatomy box is not labelled on the image (outline and box): {drawn_labels}"
    for finding in ("Pleural effusion", "Left lung"):
        assert any(finding in row for row in rows), f"{finding} not in the measurement panel: {rows}"
    assert drawn > DRAWN // 3, f"only {drawn} annotation pixels: the tracked boxes are not drawn"
    assert drawn_opened > DRAWN, f"only {drawn_opened} annotation pixels when the SR is opened"
    record("SR TID 1500", VIEWER, "pass",
           f"outlines, boxes and labels drawn ({drawn_opened} annotation pixels), anatomy boxes labelled with "
           f"their Finding Site; tracked: each box in the measurement panel with its finding ({len(rows)} rows), "
           "no error")


def test_chest_text_report_is_readable(pacs):
    server, studies = pacs
    _, _, errors, text = _open(server, studies["chest"].study_uid, "SR", "report text", "chest-text-sr")
    _assert_no_errors(errors)
    for sentence in ("Small left pleural effusion.", "Pleural effusion: present.", "Pneumothorax: absent.",
                     "left lung: area"):
        assert sentence in text, sentence
    record("SR TID 2000 (text)", VIEWER, "pass", "report text and classification findings shown as text")


def test_ct_seg_overlay_is_drawn(pacs):
    server, studies = pacs
    _, drawn, errors, _ = _open(server, studies["ct"].study_uid, "SEG", "MedVersa", "ct-seg")
    _assert_no_errors(errors)
    assert drawn > DRAWN, f"only {drawn} segment-coloured pixels in the viewport"
    record("SEG (CT)", VIEWER, "pass", f"segments drawn as overlay ({drawn} coloured pixels), no error")


def test_ct_sr_loads_and_draws_the_organ_outlines(pacs):
    server, studies = pacs
    _, drawn, errors, _ = _open(server, studies["ct"].study_uid, "SR", "MedVersa report (", "ct-sr")
    _assert_no_errors(errors)
    assert drawn > DRAWN, f"only {drawn} annotation pixels in the viewport"


def test_shared_radiograph_sr_is_drawn(pacs):
    server, studies = pacs
    if "rg1" not in studies:
        pytest.skip(f"{RG1} is not available in this checkout")
    _, drawn, errors, _ = _open(server, studies["rg1"].study_uid, "SR", "MedVersa report (", "rg1-sr")
    _assert_no_errors(errors)
    assert drawn > DRAWN, f"only {drawn} annotation pixels in the viewport"


def test_zero_pixel_spacing_source_is_a_known_ohif_limit_the_burned_in_image_shows_the_results(pacs):
    """RG1_J2KI.dcm as sent carries Pixel Spacing 0.000\\0.000 (invalid: PS3.3 requires > 0).

    OHIF 3.13 then shows the source image black and places the SR's outlines at NaN (console errors);
    the node cannot mend a source in the PACS. The burned-in Secondary Capture is what a reader sees
    there, and it must draw. Asserted both ways, so a future OHIF that copes makes this fail.
    """
    server, studies = pacs
    if "rg1-zero" not in studies:
        pytest.skip(f"{RG1} is not available in this checkout")
    study = studies["rg1-zero"]
    _, _, errors, _ = _open(server, study.study_uid, "SR", "MedVersa report (", "rg1-zero-spacing-sr")
    nan = [e.text for e in errors if "NaN" in e.text]
    assert nan, "OHIF now draws SR outlines on a zero-spacing source: update the conformance statement"
    _, drawn, sc_errors, _ = _open(server, study.study_uid, "OT", "MedVersa results image", "rg1-zero-spacing-sc")
    _assert_no_errors(sc_errors)
    assert drawn > DRAWN, f"only {drawn} coloured pixels in the burned-in image"
    record("SR TID 1500 (source with Pixel Spacing 0\\0)", VIEWER, "fails in viewer",
           f"OHIF shows the source black and the outlines at NaN (`{nan[0].splitlines()[0][:70]}`); "
           f"the burned-in Secondary Capture shows the results ({drawn} coloured pixels)")


def test_the_check_finds_nothing_on_a_study_without_results(pacs):
    server, studies = pacs
    _, drawn, errors, _ = _open(server, studies["control"].study_uid, "SR", "MedVersa report (", "control")
    _assert_no_errors(errors)
    assert drawn < DRAWN, f"{drawn} annotation pixels on a study without results: the check cannot tell"


def test_burned_in_secondary_capture_shows_the_results(pacs):
    server, studies = pacs
    _, drawn, errors, _ = _open(server, studies["chest"].study_uid, "OT", "MedVersa results image", "chest-sc")
    _assert_no_errors(errors)
    assert drawn > DRAWN, f"only {drawn} coloured pixels in the burned-in image"
    record("Secondary Capture", VIEWER, "pass", f"burned-in results shown ({drawn} coloured pixels)")


def test_radiograph_seg_is_a_known_ohif_limit(pacs):
    """OHIF 3.13 needs Pixel Measures and plane geometry that a SEG on a projection image does not have.

    Asserted, so that the matrix says what OHIF does and a future OHIF that shows it makes this fail
    (then the SR outlines are no longer the only view of the masks there).
    """
    server, studies = pacs
    _, _, errors, _ = _open(server, studies["chest"].study_uid, "SEG", "MedVersa", "chest-seg")
    reasons = [e.text for e in errors if "PixelMeasuresSequence" in e.text or "ImageOrientationPatient" in e.text]
    assert reasons, "OHIF no longer fails on a SEG without a Frame of Reference: update the conformance statement"
    record("SEG (radiograph)", VIEWER, "fails in viewer",
           "OHIF requires Pixel Measures and Plane Orientation (undefined without a Frame of Reference): "
           f"`{reasons[0].splitlines()[0][:90]}`; the SR's outlines show the masks")


def test_presentation_state_is_a_known_ohif_limit(pacs):
    """OHIF 3 does not apply GSPS (OHIF issue #4106): opening ours draws nothing on the image.

    Asserted, so that the matrix says what OHIF does; the Secondary Capture and the SR are what a
    reader sees there.
    """
    server, studies = pacs
    _, drawn, errors, _ = _open(server, studies["chest"].study_uid, "PR", "MedVersa overlays", "chest-pr")
    assert drawn < DRAWN, f"{drawn} coloured pixels: OHIF now applies GSPS; update the conformance statement"
    record("GSPS", VIEWER, "not applied by OHIF",
           "OHIF 3 does not support GSPS (OHIF issue #4106); the Secondary Capture and the SR show the results"
           + (f"; console: `{errors[0].text.splitlines()[0][:80]}`" if errors else ""))
