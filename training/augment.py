"""The paper's augmentations, driven by an explicit numpy Generator (reproducible per sample).

Language tasks: random resized crop keeping 50-100 % of the area (aspect 3/4-4/3,
as torchvision's RandomResizedCrop), then the model's 224x224 resize. 2D
segmentation: horizontal flip; on chest radiographs a flip moves the patient's
left lung to the image's left, so the caller swaps left/right labels. CT: flip
about a random axis.
"""

from __future__ import annotations

import math

import numpy as np

Box = tuple[float, float, float, float]


def random_resized_crop(pixels: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> np.ndarray:
    """A random crop of 50-100 % of the image area (the model resizes it to 224x224 afterwards)."""
    height, width = pixels.shape[:2]
    area = height * width
    for _ in range(tries):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return pixels[top:top + h, left:left + w]
    return pixels  # torchvision falls back to a centre crop; the whole image keeps every finding


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror left-right (last axis of a mask, second of an [H, W, C] image)."""
    axis = 1 if array.ndim == 3 and array.shape[-1] in (3, 4) else array.ndim - 1
    return np.ascontiguousarray(np.flip(array, axis=axis))


def flip_volume(volume: np.ndarray, mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip a [slices, rows, cols] volume and its mask about one axis."""
    return np.ascontiguousarray(np.flip(volume, axis)), np.ascontiguousarray(np.flip(mask, axis))


SIDE_SWAP = {"left": "right", "right": "left"}


def swap_sides(label: str) -> str:
    """'left lung' <-> 'right lung' after a horizontal flip of a radiograph."""
    words = label.split()
    return " ".join(SIDE_SWAP.get(w, w) for w in words)
