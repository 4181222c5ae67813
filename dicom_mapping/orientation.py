"""A chest film stored in another orientation than the model learned: turned for the model, results turned back.

Patient Orientation (0020,0020, PS3.3 C.7.6.1.1.1) names the patient direction of the image's rows
(toward increasing column index) and of its columns (toward increasing row index). The model learned
chest films as they are hung: head up (columns toward the feet, F) and, on a frontal film, the
patient's left on the image's right (rows toward L). A film stored otherwise (mirrored R\\F, upside
down, turned a quarter) is read after one of the eight flips and quarter turns brings it to that
orientation; every mask and box the model returns is mapped back to the stored pixel grid, which is
the grid the SEG, SR, presentation states and Secondary Capture describe. Fed as stored, the mirrored
RG1 film had its patient's left lung labelled "right lung" (checked by eye): a laterality error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from medversa.inference import Answer

#: The patient direction opposite each Patient Orientation letter (PS3.3 C.7.6.1.1.1).
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


@dataclass(frozen=True)
class Reorientation:
    """Transpose (swap rows and columns), then reverse the row order and/or each row.

    Model pixels are ``to_model(stored)``; a mask or box on the model pixels goes back with
    ``mask_to_stored`` / ``box_to_stored``. Boxes are ``(x0, y0, x1, y1)`` in continuous pixel
    coordinates, as the analyzer writes them; every box method takes the stored film's shape.
    """

    transpose: bool = False
    #: Reverse the order of the rows (axis 0): upside down.
    flip_rows: bool = False
    #: Reverse each row (axis 1): mirrored left to right.
    flip_columns: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_columns)

    @property
    def mirrors(self) -> bool:
        """True when the change is a reflection, not a rotation (an odd number of the three steps)."""
        return (self.transpose + self.flip_rows + self.flip_columns) % 2 == 1

    def describe(self) -> str:
        """What was done to the stored film, in words a reader's note can carry."""
        if self.is_identity:
            return "read as stored"
        if not self.transpose:
            if self.flip_rows and self.flip_columns:
                return "turned half a turn"
            return "flipped top to bottom" if self.flip_rows else "flipped left to right"
        if self.flip_rows == self.flip_columns:
            return "mirrored about the other diagonal" if self.flip_rows else "transposed (mirrored about a diagonal)"
        return "turned a quarter clockwise" if self.flip_columns else "turned a quarter anticlockwise"

    def directions(self, row: str, column: str) -> tuple[str, str]:
        """The (row, column) Patient Orientation letters of the film after this change."""
        if self.transpose:
            row, column = column, row
        if self.flip_columns:
            row = _OPPOSITE[row]
        if self.flip_rows:
            column = _OPPOSITE[column]
        return row, column

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """The stored pixels ``[rows, cols]`` or ``[rows, cols, 3]`` in the orientation the model reads."""
        out = np.swapaxes(pixels, 0, 1) if self.transpose else pixels
        if self.flip_rows:
            out = out[::-1]
        if self.flip_columns:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def mask_to_stored(self, mask: np.ndarray) -> np.ndarray:
        """A mask on the model's pixels, on the stored pixel grid."""
        out = mask[::-1] if self.flip_rows else mask
        if self.flip_columns:
            out = out[:, ::-1]
        if self.transpose:
            out = np.swapaxes(out, 0, 1)
        return np.ascontiguousarray(out)

    def _model_shape(self, stored_rows: int, stored_cols: int) -> tuple[int, int]:
        return (stored_cols, stored_rows) if self.transpose else (stored_rows, stored_cols)

    def _point_to_model(self, x: float, y: float, stored_rows: int, stored_cols: int) -> tuple[float, float]:
        rows, cols = self._model_shape(stored_rows, stored_cols)
        if self.transpose:
            x, y = y, x
        if self.flip_columns:
            x = cols - x
        if self.flip_rows:
            y = rows - y
        return x, y

    def _point_to_stored(self, x: float, y: float, stored_rows: int, stored_cols: int) -> tuple[float, float]:
        rows, cols = self._model_shape(stored_rows, stored_cols)
        if self.flip_columns:
            x = cols - x
        if self.flip_rows:
            y = rows - y
        return (y, x) if self.transpose else (x, y)

    def box_to_model(self, box: tuple[float, float, float, float], stored_rows: int,
                     stored_cols: int) -> tuple[float, float, float, float]:
        """A box on the stored film (a reader's region) on the model's pixels."""
        return _bounds([self._point_to_model(box[0], box[1], stored_rows, stored_cols),
                        self._point_to_model(box[2], box[3], stored_rows, stored_cols)])

    def box_to_stored(self, box: tuple[float, float, float, float], stored_rows: int,
                      stored_cols: int) -> tuple[float, float, float, float]:
        """A box on the model's pixels on the stored film."""
        return _bounds([self._point_to_stored(box[0], box[1], stored_rows, stored_cols),
                        self._point_to_stored(box[2], box[3], stored_rows, stored_cols)])

    def answer_to_stored(self, answer: Answer, image_index: int, stored_rows: int, stored_cols: int) -> Answer:
        """``answer`` with the boxes and masks of image ``image_index`` on the stored pixel grid."""
        if self.is_identity:
            return answer
        boxes = []
        for box in answer.boxes:
            if box.image_index == image_index:
                x0, y0, x1, y1 = self.box_to_stored((box.x0, box.y0, box.x1, box.y1), stored_rows, stored_cols)
                box = replace(box, x0=x0, y0=y0, x1=x1, y1=y1)
            boxes.append(box)
        masks = [replace(m, mask=self.mask_to_stored(m.mask)) if m.image_index == image_index else m
                 for m in answer.masks_2d]
        return replace(answer, boxes=boxes, masks_2d=masks)


#: Nothing to change: the film is stored as the model reads it.
AS_STORED = Reorientation()


def _bounds(corners: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _hung(row: str, column: str, lateral: bool) -> bool:
    """Whether (row, column) directions are those the model learned: head up; a frontal's left on the right."""
    return column == "F" and (lateral or row != "R")


def chest_reorientation(row: str, column: str, lateral: bool) -> Reorientation | None:
    """The change that hangs a chest film stored with Patient Orientation ``row\\column`` as the model learned.

    ``row`` and ``column`` are the first letters of the two values. Nothing is changed when the film
    is already hung so. A lateral may face either way, so a turn is preferred to a reflection (a
    lateral is never mirrored when a turn suffices). None when the two letters do not name two
    different axes of the patient (the values contradict each other).
    """
    if row not in _OPPOSITE or column not in _OPPOSITE or column in (row, _OPPOSITE[row]):
        return None
    candidates = [Reorientation(t, r, c) for t, r, c in itertools.product((False, True), repeat=3)]
    candidates.sort(key=lambda change: (not change.is_identity, change.mirrors))
    for change in candidates:
        if _hung(*change.directions(row, column), lateral):
            return change
    return None  # unreachable for two different axes: some change always brings F downwards
