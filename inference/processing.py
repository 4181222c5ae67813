"""Pre- and post-processing exactly as published (utils.py of the published code).

2D: RGB, ``Resize([224, 224])`` (PIL bilinear), ``ToTensor``, CLIP ``Normalize``,
rounded through bfloat16 as the published pipeline hands images to the model.
CT: Hounsfield units clipped to [-200, 300], nearest-neighbour zoom to
192x192x64, torchio-style z-normalisation over voxels above the mean, bfloat16.
Masks: sigmoid >= 0.5, largest connected component and holes filled (2D), holes
filled slice by slice (3D: the published drawing of filled contours; no
largest-component step, which would drop one of two kidneys), then
nearest-neighbour back to the source size.

Volumes come in as ``[slices, rows, columns]`` (DICOM order). The published
model read NIfTI arrays ``[x, y, z]``, so the model volume is ``[z, x, y]``; the
transposes here keep that layout and hand masks back as ``[slices, rows,
columns]``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision.transforms import functional as TF

from .model_config import PreprocessConfig


def to_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey [H, W] or colour [H, W, 3] display pixels as uint8 RGB."""
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise ValueError(f"expected a [H, W] or [H, W, 3] image, got shape {pixels.shape}")
    pixels = pixels[..., :3]
    if pixels.dtype != np.uint8:
        if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            raise ValueError("non-uint8 images must already be display values in [0, 255]")
        pixels = pixels.astype(np.uint8)
    return np.ascontiguousarray(pixels)


def preprocess_image(pixels: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """Display pixels -> normalised [3, 224, 224] float32 (bfloat16-rounded)."""
    image = Image.fromarray(to_rgb_uint8(pixels), mode="RGB")
    image = TF.resize(image, [cfg.image_size, cfg.image_size])
    tensor = TF.normalize(TF.to_tensor(image), cfg.mean, cfg.std)
    return tensor.to(torch.bfloat16).float()


def preprocess_volume(hu: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """HU volume [slices, rows, cols] -> [1, 64, 192, 192] float32 (bfloat16-rounded)."""
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"expected a [slices, rows, columns] volume, got shape {hu.shape}")
    xyz = np.clip(np.asarray(hu, dtype=np.float64).transpose(2, 1, 0), cfg.ct_hu_min, cfg.ct_hu_max)
    depth, width, height = cfg.ct_shape
    factors = (width / xyz.shape[0], height / xyz.shape[1], depth / xyz.shape[2])
    zoomed = ndimage.zoom(xyz, factors, order=0)
    volume = torch.from_numpy(zoomed).permute(2, 0, 1).unsqueeze(0).float()
    return z_normalize(volume).to(torch.bfloat16).float()


def z_normalize(volume: torch.Tensor) -> torch.Tensor:
    """torchio ``ZNormalization(masking_method=mean)``: statistics of voxels above the mean."""
    foreground = volume[volume > volume.mean()]
    if foreground.numel() < 2:
        raise ValueError("the volume is constant; it cannot be z-normalised")
    std = foreground.std()
    if std == 0:
        raise ValueError("the volume's foreground is constant; it cannot be z-normalised")
    return (volume - foreground.mean()) / std


def resize_nearest(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of an N-d array (source index = floor(i * in / out), as cv2)."""
    index = tuple(
        np.minimum((np.arange(out) * (src / out)).astype(np.int64), src - 1)
        for src, out in zip(mask.shape, shape, strict=False)
    )
    return mask[np.ix_(*index)]


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def postprocess_mask_2d(logits: torch.Tensor, source_shape: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """Logits [224, 224] -> boolean mask [rows, cols] of the source image."""
    mask = (torch.sigmoid(logits.float()) >= cfg.mask_threshold).cpu().numpy()
    if mask.any():
        mask = ndimage.binary_fill_holes(largest_component(mask))
    return resize_nearest(mask, source_shape).astype(bool)


def postprocess_mask_3d(logits: torch.Tensor, source_shape: tuple[int, int, int], cfg: PreprocessConfig) -> np.ndarray:
    """Logits [z, x, y] (model layout) -> boolean mask [slices, rows, cols] of the source volume."""
    mask = (torch.sigmoid(logits.float()) >= cfg.mask_threshold).cpu().numpy()
    for k in range(mask.shape[0]):
        if mask[k].any():
            mask[k] = ndimage.binary_fill_holes(mask[k])
    slices, rows, cols = source_shape
    return resize_nearest(mask, (slices, cols, rows)).transpose(0, 2, 1).astype(bool)


def box_to_pixels(box: torch.Tensor, width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised x0, y0, x1, y1 (clamped to [0, 1], ordered) -> source pixel coordinates."""
    v = box.float().clamp(0.0, 1.0).tolist()
    x0, x1 = sorted((v[0], v[2]))
    y0, y1 = sorted((v[1], v[3]))
    return (x0 * width, y0 * height, x1 * width, y1 * height)
