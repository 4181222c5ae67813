"""Run-length encoded masks as CheXmask and COCO publish them.

Runs alternate background/foreground starting with background (COCO
uncompressed RLE, column-major) or are (start, length) pairs, 1-based, over the
row-major flattened image (CheXmask, the Kaggle convention). Both decode to a
boolean ``[height, width]`` array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def decode_runs(counts: Sequence[int], height: int, width: int, order: str = "C") -> np.ndarray:
    """Alternating background/foreground run lengths -> bool mask (``order`` "F" for COCO)."""
    total = height * width
    if sum(counts) != total:
        raise ValueError(f"runs cover {sum(counts)} pixels, the mask has {total}")
    flat = np.zeros(total, dtype=bool)
    pos = 0
    for i, n in enumerate(counts):
        if n < 0:
            raise ValueError(f"negative run length {n}")
        if i % 2 == 1:
            flat[pos:pos + n] = True
        pos += n
    return flat.reshape((height, width), order=order)


def decode_start_length(text: str, height: int, width: int) -> np.ndarray:
    """CheXmask / Kaggle ``"start length start length ..."`` (1-based starts, row-major) -> bool mask."""
    values = [int(v) for v in text.split()]
    if len(values) % 2:
        raise ValueError("an RLE string needs start/length pairs")
    flat = np.zeros(height * width, dtype=bool)
    for start, length in zip(values[0::2], values[1::2], strict=False):
        if start < 1 or length < 0 or start - 1 + length > flat.size:
            raise ValueError(f"run ({start}, {length}) lies outside a {height}x{width} mask")
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(height, width)


def encode_start_length(mask: np.ndarray) -> str:
    """The inverse of :func:`decode_start_length` (fixtures, tests)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=np.uint8).ravel(), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=False))
