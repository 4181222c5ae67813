"""Chest films stored mirrored, upside down or turned are read hung as the model learned, results on the stored grid.

Each stored film is made from one asymmetric "hung" film (head up, patient's left on the image's
right: Patient Orientation L\\F) by a numpy flip or turn, and its Patient Orientation letters are
worked out by hand from that turn, not by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from medversa.dicom_mapping import SeriesKind, StudyOptions, classify, plan_study, prepare_study
from medversa.dicom_mapping.orientation import AS_STORED, Reorientation, chest_reorientation
from medversa.inference import Answer, Box, Mask2D, Task

from . import dicom_factory as fac

ROWS, COLS = 40, 30


def _hung() -> np.ndarray:
    """A film as the model reads it: no flip or turn maps it onto itself (every pixel differs)."""
    return np.arange(ROWS * COLS, dtype=np.int64).reshape(ROWS, COLS)


#: (Patient Orientation row, column) of the stored film -> how it is made from the hung one.
STORED = {
    ("L", "F"): lambda a: a,
    ("R", "F"): lambda a: a[:, ::-1],  # mirrored
    ("L", "H"): lambda a: a[::-1],  # flipped top to bottom
    ("R", "H"): lambda a: a[::-1, ::-1],  # half a turn
    ("F", "R"): lambda a: np.rot90(a),  # a quarter anticlockwise: rows now run toward the feet
    ("H", "L"): lambda a: np.rot90(a, -1),  # a quarter clockwise
    ("F", "L"): lambda a: a.T,  # transposed
    ("H", "R"): lambda a: a.T[::-1, ::-1],  # transposed about the other diagonal
}


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The continuous-coordinate box of a mask's pixels: (first column, first row, last column + 1, last row + 1)."""
    rows, cols = np.nonzero(mask)
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


@pytest.mark.parametrize("letters", sorted(STORED))
def test_every_stored_orientation_is_hung_for_the_model_and_its_results_turned_back(letters):
    hung = _hung()
    stored = STORED[letters](hung)
    change = chest_reorientation(*letters, lateral=False)
    assert change is not None
    assert np.array_equal(change.to_model(stored), hung)
    assert change.is_identity == (letters == ("L", "F"))
    # A region on the model's film (rows 5-11, columns 20-26: the patient's left upper zone) comes back
    # where the same pixels lie on the stored film, as a mask and as a box.
    region = np.zeros_like(hung, dtype=bool)
    region[5:12, 20:27] = True
    on_stored = STORED[letters](region)
    assert np.array_equal(change.mask_to_stored(region), on_stored)
    assert change.box_to_stored(_box_of(region), *stored.shape) == _box_of(on_stored)
    # A reader's region drawn on the stored film reaches the model on the same pixels.
    assert change.box_to_model(_box_of(on_stored), *stored.shape) == _box_of(region)


def test_a_colour_film_keeps_its_channels():
    rgb = np.stack([_hung(), _hung() + 1, _hung() + 2], axis=-1)
    change = chest_reorientation("F", "R", lateral=False)
    assert np.array_equal(change.to_model(np.rot90(rgb)), rgb)


def test_a_lateral_is_turned_rather_than_mirrored_and_may_face_either_way():
    assert chest_reorientation("A", "F", lateral=True) == AS_STORED
    assert chest_reorientation("R", "F", lateral=True).is_identity  # a default some devices write
    upside_down = chest_reorientation("A", "H", lateral=True)
    assert upside_down == Reorientation(flip_rows=True, flip_columns=True) and not upside_down.mirrors
    turned = chest_reorientation("F", "P", lateral=True)
    assert turned.transpose and not turned.mirrors and turned.directions("F", "P")[1] == "F"
    # The same letters on a frontal film: only a reflection puts the patient's left on the right.
    assert chest_reorientation("R", "F", lateral=False) == Reorientation(flip_columns=True)


@pytest.mark.parametrize("letters", [("L", "R"), ("F", "H"), ("A", "P"), ("L", "L"), ("X", "F")])
def test_contradictory_orientation_leaves_the_film_out(letters):
    assert chest_reorientation(*letters, lateral=False) is None
    ds = fac.make_cr(PatientOrientation=list(letters))
    found = classify(ds)
    assert found.kind is None and "is contradictory" in found.reason and found.orientation is None
    stated = "\\".join(letters)
    assert found.reader_note == f"a film whose Patient Orientation {stated} is contradictory, so its sides are unknown"


def test_a_mirrored_film_is_read_hung_and_its_masks_and_boxes_land_on_the_stored_film():
    """Through the node's own prepare -> plan -> result path: the model is given the film hung (its
    pixels flipped back), and a left-lung mask and box it returns on the hung film's right half
    come back on the stored film's LEFT half, where the mirrored film shows the patient's left lung."""
    rows, cols = 64, 48
    hung = (np.arange(rows * cols).reshape(rows, cols) % 4096).astype(np.uint16)
    upright = fac.make_cr(rows, cols, pixels=hung, instance_number=1)
    mirrored = fac.make_cr(rows, cols, pixels=np.ascontiguousarray(hung[:, ::-1]), instance_number=2,
                           study_uid=upright.StudyInstanceUID, sop_uid=fac.generate_uid(),
                           PatientOrientation=["R", "F"])
    found = classify(mirrored)
    assert found.kind is SeriesKind.CHEST_RADIOGRAPH and found.reader_note is None
    assert found.orientation == Reorientation(flip_columns=True)
    inputs = prepare_study([upright, mirrored])
    assert [i.ref.sop_instance_uid for i in inputs.images] == [upright.SOPInstanceUID, mirrored.SOPInstanceUID]
    as_read, as_mirrored = inputs.images
    assert np.array_equal(as_mirrored.pixels, as_read.pixels[:, ::-1])  # stored as sent
    planned, _ = plan_study(inputs, StudyOptions(tasks=(Task.CHEST_ORGAN_SEGMENTATION,)))
    by_source = {p.images[0].ref.sop_instance_uid: p for p in planned}
    request = by_source[mirrored.SOPInstanceUID]
    assert np.array_equal(request.request.images[0].pixels, as_read.pixels)  # the model sees it hung
    left = np.zeros((rows, cols), dtype=bool)
    left[10:50, 28:44] = True  # the patient's left lung on the hung film: the image's right
    answer = Answer("r", Task.CHEST_ORGAN_SEGMENTATION, "left lung", boxes=[Box("left lung", 28, 10, 44, 50)],
                    masks_2d=[Mask2D("left lung", left)])
    result = request.result(answer)
    assert np.array_equal(result.answer.masks_2d[0].mask, left[:, ::-1])
    box = result.answer.boxes[0]
    assert (box.x0, box.y0, box.x1, box.y1) == (cols - 44, 10, cols - 28, 50)
    # The film stored hung is read as it is.
    same = by_source[upright.SOPInstanceUID].result(answer)
    assert np.array_equal(same.answer.masks_2d[0].mask, left)


def test_a_region_given_on_a_film_stored_turned_is_asked_on_the_hung_film():
    """``infer --region`` names pixels of the film as stored; the model reads the film hung."""
    hung = (np.arange(ROWS * COLS).reshape(ROWS, COLS) % 4096).astype(np.uint16)
    turned = fac.make_cr(COLS, ROWS, pixels=np.ascontiguousarray(np.rot90(hung)), PatientOrientation=["F", "R"])
    inputs = prepare_study([turned])
    planned, _ = plan_study(inputs, StudyOptions(tasks=(), region=(12.0, 5.0, 20.0, 9.0)))
    [caption] = [p.request for p in planned if p.request.task is Task.REGION_CAPTIONING]
    assert np.array_equal(caption.images[0].pixels, inputs.images[0].pixels.T[:, ::-1])  # hung again
    # Stored (x, y) of np.rot90(hung) is hung (column COLS - y, row x): the box's corners map so.
    assert caption.region == (COLS - 9.0, 12.0, COLS - 5.0, 20.0)
