"""Shared geometry for overlays: box rectangles, mask outlines and label positions (image pixels).

Coordinates are (column, row) with the origin at the top-left corner of the top-left
pixel, as both presentation-state PIXEL annotations (PS3.3 C.10.5) and SR SCOORDs use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from skimage import measure

from medversa.inference import Answer

if TYPE_CHECKING:
    from PIL import Image

#: Outline points kept per contour (longer contours are evenly subsampled).
MAX_OUTLINE_POINTS = 400


@dataclass(frozen=True)
class Shape:
    """One drawable: a closed polyline (box or outline) with its label and where to write it."""

    label: str
    kind: str  # "box" or "outline"
    points: np.ndarray  # [n, 2] (column, row), closed (first == last)
    label_anchor: tuple[float, float]


def box_polyline(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def mask_outlines(mask: np.ndarray, max_points: int = MAX_OUTLINE_POINTS) -> list[np.ndarray]:
    """Closed outlines of a boolean mask as [n, 2] (column, row) polylines, largest first."""
    padded = np.pad(mask.astype(float), 1)
    outlines = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        step = max(1, int(np.ceil(len(contour) / max_points)))
        pts = contour[::step] - 1.0 + 0.5  # undo the padding; pixel centres -> pixel-edge origin
        pts = np.clip(pts, 0, [mask.shape[0], mask.shape[1]])
        xy = pts[:, ::-1]
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        outlines.append(xy)
    outlines.sort(key=len, reverse=True)
    return outlines


def shapes_for_image(answers: list[Answer], image_index: int = 0) -> list[Shape]:
    """Every box and 2D mask outline of ``answers`` drawn on image ``image_index``."""
    shapes: list[Shape] = []
    for answer in answers:
        for box in answer.boxes:
            if box.image_index == image_index:
                shapes.append(Shape(box.label, "box", box_polyline(box.x0, box.y0, box.x1, box.y1), (box.x0, box.y0)))
        for m in answer.masks_2d:
            if m.image_index != image_index or not m.mask.any():
                continue
            outlines = mask_outlines(m.mask)
            for i, outline in enumerate(outlines):
                top = outline[np.argmin(outline[:, 1])]
                shapes.append(Shape(m.label if i == 0 else "", "outline", outline, (float(top[0]), float(top[1]))))
    return shapes


def draw_shapes(image: Image.Image, shapes: list[Shape], fill: object, width: int = 0) -> None:
    """Draw every shape and its label onto a PIL image (in place)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    line_width = width or max(1, round(min(image.size) / 400))
    for shape in shapes:
        draw.line([tuple(p) for p in shape.points], fill=fill, width=line_width)
        if shape.label:
            x, y = shape.label_anchor
            draw.text((x + 2, max(y - 12 * line_width, 0)), shape.label, fill=fill, font_size=max(10, 10 * line_width))


def rasterize(shapes: list[Shape], rows: int, cols: int) -> np.ndarray:
    """A boolean [rows, cols] bitmap of the shapes and their labels (overlay planes)."""
    from PIL import Image

    image = Image.new("1", (cols, rows), 0)
    draw_shapes(image, shapes, fill=1)
    return np.array(image, dtype=bool)
