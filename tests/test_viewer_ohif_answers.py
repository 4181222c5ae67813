"""OHIF Viewer 3.13.2 in headless Chromium draws the node's answer where the reader drew the question.

A chest image, a reader's OHIF-style TID 1500 SR (a RectangleROI labelled with a question, an
ArrowAnnotate labelled "?") and the node's answer SR for it (built as :func:`medversa.node.ask.compute_ask`
builds it, with fixed answer texts: no model) are stored in Orthanc, which serves the viewer at ``/ohif``.
The reader opens the answer SR (double-click on its series) and then answers OHIF's "track measurements?"
with Yes. The test asserts from the screenshots that the answer's marks are drawn on the reader's
coordinates (annotation colour along the rectangle's outline and at the arrow's tip, none elsewhere on
the image), that the marks OHIF draws are the answer SR's groups (their Tracking Unique Identifiers), that
the answer texts are the measurements' labels in OHIF's measurement panel, and that the console logged no
error. The same check on a study without the answer SR fails.

What OHIF 3.13.2 shows of the texts (read from its dist, ``cornerstone-dicom-sr``): its SR display tool
labels a TID 1410 group (a SCOORD directly in the group) only from the group's NUMs and Finding Site, so
before tracking the marks carry empty text boxes; tracking hydrates each group through the Cornerstone3D
adapters, whose label is the group's Comment (121106, DCM): the answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from medversa.dicom_mapping import (
    AlgorithmInfo,
    RegionAnswer,
    build_answer_sr,
    derive_uid,
    in_pixels,
    read_annotation,
    read_answers,
)
from medversa.node.ask import ask_key

from . import dicom_factory as f
from .ask_fixtures import arrow_group, ohif_measurement_report, rectangle_group
from .browser import Chromium, ConsoleEntry
from .dicom_tools import dciodvfy_errors, pixelmed_sr_report
from .ohif import SKIP_TOUR, VIEWPORT_BOX, orthanc_viewer_config, thumbnail_script, viewer_or_skip, viewer_url
from .orthanc import orthanc_server
from .test_viewer_ohif import BUTTON, MEASUREMENT_TAB, PANEL_ROWS
from .viewer_results import REPO, record

VIEWER = "OHIF 3.13.2 (browser)"
KIND = "SR answers (TID 1500)"
SHOTS = REPO / "build" / "viewer-screenshots"
ROWS = COLS = 256
#: The reader's rectangle (x0, y0, x1, y1) and arrow (tip, tail), image coordinates (column, row).
BOX = (150.0, 40.0, 220.0, 100.0)
TIP, TAIL = (160.0, 170.0), (190.0, 200.0)
QUESTION = "Is there a pneumothorax?"
ANSWER = "No pneumothorax in the marked region."
CAPTION = "Clear lung apex."
ARROW_CAPTION = "Blunted costophrenic angle."
#: Screen pixels either side of a mark's expected line where its colour may fall (the image is shown ~3.5x).
BAND = 5
#: Fewest fraction of an outline edge's length that must be coloured (OHIF's SR display dashes it 4,4).
EDGE_COVERED = 0.35


def _chest_pixels() -> np.ndarray:
    """Dark lungs in a bright body: grayscale, as every radiograph displays."""
    y, x = np.mgrid[0:ROWS, 0:COLS]
    body = np.full((ROWS, COLS), 2600.0)
    for cx in (0.32 * COLS, 0.68 * COLS):
        body -= 1500 * (((x - cx) / (0.16 * COLS)) ** 2 + ((y - 0.5 * ROWS) / (0.32 * ROWS)) ** 2 < 1)
    return np.clip(body + np.random.default_rng(0).normal(0, 40, body.shape), 0, 4095).astype(np.uint16)


@dataclass
class Study:
    image: Dataset
    reader: Dataset
    answer: Dataset | None

    @property
    def uid(self) -> str:
        return str(self.image.StudyInstanceUID)


def _study(with_answer: bool) -> Study:
    """A chest image, the reader's questions on it and (``with_answer``) the node's answer SR."""
    image = f.make_cr(ROWS, COLS, pixels=_chest_pixels(), study_uid=hd.UID(), SeriesDescription="PA chest",
                      StudyDescription="Chest PA")
    reader = ohif_measurement_report(image, [rectangle_group(image, BOX, QUESTION), arrow_group(image, TIP, TAIL, "?")])
    if not with_answer:
        return Study(image, reader, None)
    annotation, why = read_annotation(reader)
    assert annotation is not None, why
    rect, arrow = (in_pixels(r, ROWS, COLS) for r in annotation.regions)
    assert (rect.question, arrow.question) == (QUESTION, "")
    # As compute_ask: UIDs from the ask's key; the question's answer, the caption of the bare "?".
    algorithm = AlgorithmInfo()
    key = ask_key(str(image.StudyInstanceUID), {"source": "annotation", "annotation_uid": str(reader.SOPInstanceUID)},
                  algorithm.model_id)
    answer = build_answer_sr([RegionAnswer(rect, CAPTION, rect.question, ANSWER), RegionAnswer(arrow, ARROW_CAPTION)],
                             reader, [image], algorithm, derive_uid(algorithm.org_root, key, "series"),
                             derive_uid(algorithm.org_root, key, "SR"))
    return Study(image, reader, answer)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc serving the viewer, with a study answered by the node and a control study without the answer."""
    folder = viewer_or_skip()
    server = orthanc_server(tmp_path_factory, extra_config=orthanc_viewer_config(folder))
    out = tmp_path_factory.mktemp("answers")
    studies = {"asked": _study(True), "control": _study(False)}
    paths = {}
    for name, study in studies.items():
        for part in ("image", "reader", "answer"):
            ds = getattr(study, part)
            if ds is not None:
                paths[name, part] = out / f"{name}-{part}.dcm"
                ds.save_as(paths[name, part], enforce_file_format=True)
                server.upload(paths[name, part])
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield server, studies, paths
    server.stop(kill=True)


# -- the page -----------------------------------------------------------------------------------

#: The active viewport's image id and the page positions (x, y) of image points (column, row), through
#: Cornerstone's own image-to-world-to-canvas transforms (the viewport's zoom and pan as displayed).
TO_PAGE = """(() => {{
  const vp = cornerstone.getRenderingEngines()[0].getViewports()
    .find(v => v.getCurrentImageId && v.getCurrentImageId());
  if (!vp) return null;
  const id = vp.getCurrentImageId();
  const r = vp.canvas.getBoundingClientRect();
  return {{id, page: {points}.map(p => {{
    const c = vp.worldToCanvas(cornerstone.utilities.imageToWorldCoords(id, p));
    return [c[0] + r.x, c[1] + r.y];
  }})}};
}})()"""
#: Page boxes (x, y, width, height) of the annotation text boxes and their dashed link lines.
LABEL_BOXES = """[...document.querySelectorAll('svg g[data-annotation-uid], svg line[stroke-dasharray]')].map(e => {
  const r = e.getBoundingClientRect();
  return [r.x, r.y, r.width, r.height];
})"""
#: The annotation UIDs of the text boxes drawn in the viewport (OHIF: an SR group's Tracking Unique Identifier).
DRAWN_UIDS = "[...new Set([...document.querySelectorAll('svg g[data-annotation-uid]')]" \
             ".map(e => e.getAttribute('data-annotation-uid')))]"


@dataclass
class Shown:
    """What one state of the page showed."""

    shot: Path
    image_id: str = ""
    #: Page positions of POINTS (below).
    page: list[list[float]] = field(default_factory=list)
    labels: list[list[float]] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)


#: Image points whose page positions are read: the rectangle's corners, the arrow's tip, the end OHIF gives
#: an arrow drawn from a one-point POINT (a tenth of the image down and right), and the image's corners.
POINTS = [[BOX[0], BOX[1]], [BOX[2], BOX[1]], [BOX[2], BOX[3]], [BOX[0], BOX[3]], list(TIP),
          [TIP[0] + COLS / 10, TIP[1] + ROWS / 10], [0, 0], [COLS, ROWS]]


def _snapshot(browser: Chromium, name: str) -> Shown:
    mapped = browser.evaluate(TO_PAGE.format(points=json.dumps(POINTS))) or {}
    return Shown(browser.screenshot(SHOTS / f"{name}.png"), mapped.get("id", ""), mapped.get("page", []),
                 browser.evaluate(LABEL_BOXES) or [], browser.evaluate(DRAWN_UIDS) or [],
                 browser.evaluate(PANEL_ROWS) or [])


def _errors(browser: Chromium) -> list[ConsoleEntry]:
    # Every console error counts, and every failed request (DICOMweb or the viewer's own files).
    errors = [e for e in browser.console if e.level == "error"]
    return errors + [ConsoleEntry("error", f"HTTP {status} {url}", "network") for status, url in browser.failed]


def _view(server, study_uid: str, name: str) -> tuple[bool, Shown | None, Shown | None, list[ConsoleEntry]]:
    """Open the study, double-click the answer SR's series, then track its measurements (Yes).

    Returns (series found, shown before tracking, shown after tracking or None without a prompt, errors).
    """
    with Chromium() as browser:
        browser.navigate(server.url + "/system")
        browser.wait_for("document.readyState === 'complete'", 20)
        browser.evaluate(SKIP_TOUR)
        browser.navigate(viewer_url(server.url, study_uid))
        browser.wait_for("document.querySelectorAll('[data-cy=\"series-modality-label\"]').length > 0", 90)
        browser.wait_for(VIEWPORT_BOX, 60)
        time.sleep(2)
        where = browser.evaluate(thumbnail_script("SR", "MedVersa answers"))
        if where is None:
            return False, _snapshot(browser, name), None, _errors(browser)
        browser.double_click(*where)
        yes = BUTTON.format(text=json.dumps("Yes"))
        try:
            browser.wait_for(f"document.querySelectorAll('svg g[data-annotation-uid]').length >= 2 && {yes}", 30)
        except TimeoutError:
            pass  # asserted from what is shown
        time.sleep(1)
        before = _snapshot(browser, name)
        button = browser.evaluate(yes)
        after = None
        if button:
            browser.click(*button)
            time.sleep(4)
            if not browser.evaluate(PANEL_ROWS):  # the side panel is closed or on another tab
                tab = browser.evaluate(MEASUREMENT_TAB)
                if tab:
                    browser.click(*tab)
                    time.sleep(2)
            after = _snapshot(browser, f"{name}-tracked")
        return True, before, after, _errors(browser)


# -- the pixels ---------------------------------------------------------------------------------


def _coloured(png: Path) -> np.ndarray:
    """Where a screenshot is annotation-coloured: not gray and not OHIF's blue chrome (as
    :func:`tests.ohif.annotation_pixels` counts them)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return (chroma > 12) & (rgb[..., 2] < np.maximum(rgb[..., 0], rgb[..., 1]))


def _edge_covered(mask: np.ndarray, a: list[float], b: list[float]) -> float:
    """The fraction of the straight edge a-b (page coordinates) with colour within BAND pixels of it."""
    steps = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])))
    hits = 0
    for t in np.linspace(0, 1, steps + 1):
        x, y = int(round(a[0] + t * (b[0] - a[0]))), int(round(a[1] + t * (b[1] - a[1])))
        hits += bool(mask[max(y - BAND, 0):y + BAND + 1, max(x - BAND, 0):x + BAND + 1].any())
    return hits / (steps + 1)


def _box(points: list[list[float]], margin: float) -> tuple[int, int, int, int]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (int(min(xs) - margin), int(min(ys) - margin), int(max(xs) + margin) + 1, int(max(ys) + margin) + 1)


def _marks(shown: Shown, state: str, image_uid: str) -> list[str]:
    """Why the marks in ``shown`` are not the answer's rectangle and arrow on the reader's coordinates."""
    if not shown.page:
        return [f"{state}: no image in the viewport"]
    problems = []
    if f"/instances/{image_uid}/" not in shown.image_id:
        problems.append(f"{state}: the viewport shows {shown.image_id}, not the reader's image")
    mask = _coloured(shown.shot)
    corners, tip, arrow_end, origin, far = shown.page[:4], shown.page[4], shown.page[5], shown.page[6], shown.page[7]
    for k in range(4):
        covered = _edge_covered(mask, corners[k], corners[(k + 1) % 4])
        if covered < EDGE_COVERED:
            problems.append(f"{state}: the rectangle's outline is not drawn on edge {k + 1} ({covered:.0%} coloured)")
    x0, y0, x1, y1 = _box([tip], 12)
    if mask[y0:y1, x0:x1].sum() < 10:
        problems.append(f"{state}: nothing drawn at the arrow's tip")
    # Elsewhere on the image: no colour outside the marks, their text boxes and link lines.
    elsewhere = np.zeros_like(mask)
    ix0, iy0, ix1, iy1 = _box([origin, far], -BAND)
    elsewhere[max(iy0, 0):iy1, max(ix0, 0):ix1] = True
    allowed = [_box(corners, 2 * BAND), _box([tip, arrow_end], 12)]
    allowed += [_box([[x, y], [x + w, y + h]], BAND) for x, y, w, h in shown.labels]
    for bx0, by0, bx1, by1 in allowed:
        elsewhere[max(by0, 0):by1, max(bx0, 0):bx1] = False
    stray = int((mask & elsewhere).sum())
    if stray > 5:  # none, give or take anti-aliasing
        problems.append(f"{state}: {stray} annotation-coloured pixels elsewhere on the image")
    return problems


def _check(server, study: Study, name: str) -> tuple[list[str], list[ConsoleEntry]]:
    """Everything the reader must see of the answer, as a list of what is missing (empty: all shown)."""
    found, before, after, errors = _view(server, study.uid, name)
    image_uid = str(study.image.SOPInstanceUID)
    if not found:
        return ["no answer SR series in the study browser"] + _marks(before, "study", image_uid), errors
    problems = _marks(before, "SR display", image_uid)
    groups = set(_tracking_uids(study.answer)) if study.answer is not None else set()
    if set(before.uids) != groups:
        problems.append(f"SR display: the drawn marks {sorted(before.uids)} are not the answer's groups "
                        f"{sorted(groups)}")
    if after is None:
        problems.append("OHIF did not offer to track the answer's measurements")
    else:
        problems += _marks(after, "tracked", image_uid)
        for text in (ANSWER, ARROW_CAPTION):
            if not any(text in row for row in after.rows):
                problems.append(f"tracked: the answer {text!r} is not in the measurement panel ({after.rows})")
    return problems, errors


def _tracking_uids(sr: Dataset) -> list[str]:
    """The answer groups' Tracking Unique Identifiers: the annotation UIDs OHIF gives their marks."""
    uids = []
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            uids += [str(child.UID) for child in group.ContentSequence
                     if child.ValueType == "UIDREF" and child.ConceptNameCodeSequence[0].CodeValue == "112040"]
    return uids


def _assert_no_errors(errors: list[ConsoleEntry]) -> None:
    assert not errors, "\n".join(f"{e.source}: {e.text[:400]}" for e in errors)


# -- the tests ----------------------------------------------------------------------------------


def test_ohif_draws_the_answer_where_the_reader_asked_and_shows_its_text(pacs):
    server, studies, paths = pacs
    study = studies["asked"]
    # The object under test is the one compute_ask writes: valid, and holding what the viewer shows.
    answers = read_answers(pydicom.dcmread(paths["asked", "answer"]))
    assert [a["comment"] for a in answers] == [ANSWER, ARROW_CAPTION]
    x0, y0, x1, y1 = BOX
    assert answers[0]["graphic_data"] == [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]
    assert answers[1]["graphic_data"] == list(TIP)
    problems, errors = _check(server, study, "answers")
    _assert_no_errors(errors)
    assert not problems, "\n".join(problems)
    record(KIND, VIEWER, "pass",
           "drawn on the reader's rectangle and arrow; the answers are the measurements' labels in the panel once "
           "tracked (OHIF's SR display shows no Comment of a TID 1410 group: empty text boxes before tracking)")


def test_the_check_fails_on_a_study_without_the_answer(pacs):
    server, studies, _ = pacs
    problems, errors = _check(server, studies["control"], "answers-control")
    _assert_no_errors(errors)
    assert "no answer SR series in the study browser" in problems
    assert any("rectangle's outline is not drawn" in p for p in problems), problems
    assert any("arrow's tip" in p for p in problems), problems


def test_the_answer_sr_passes_the_validators_of_the_matrix(tmp_path):
    """The answer SR of the browser test, for the matrix's other columns (tests/test_node_ask_units.py checks
    more answer SRs the same way)."""
    path = tmp_path / "answer.dcm"
    _study(True).answer.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    record(KIND, "dciodvfy", "pass", "no errors")
    errors, warnings = pixelmed_sr_report(path)
    assert errors == []
    record(KIND, "PixelMed DicomSRValidator", "pass", f"0 errors, {len(warnings)} warnings (conformance statement)")
    sr = hd.sr.srread(path)
    assert [a["comment"] for a in read_answers(sr)] == [ANSWER, ARROW_CAPTION]
    record(KIND, "highdicom read-back", "pass", "reads back (srread), answers as the groups' Comments")
