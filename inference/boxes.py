"""Box arithmetic the analyzer and the evaluation share (torch-free: the evaluation imports it too)."""

from __future__ import annotations

#: ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the source image.
PixelBox = tuple[float, float, float, float]


def box_overlap(a: PixelBox, b: PixelBox) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when both are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def duplicate_boxes(labelled: list[tuple[str, PixelBox]], min_iou: float) -> set[int]:
    """Indices of boxes that repeat an earlier box of the same label (IoU >= ``min_iou``): the one box a
    class gets when the model names it twice, as non-maximum suppression keeps one box per object."""
    keys = [" ".join(label.lower().split()) for label, _ in labelled]
    repeated: set[int] = set()
    for i, (_, box) in enumerate(labelled):
        if any(j not in repeated and keys[j] == keys[i] and box_overlap(box, labelled[j][1]) >= min_iou
               for j in range(i)):
            repeated.add(i)
    return repeated
