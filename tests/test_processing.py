import numpy as np
import pytest
import torch

from medversa.inference import postprocess_mask_2d, preprocess_image, preprocess_volume, resize_nearest
from medversa.inference.model_config import PreprocessConfig
from medversa.inference.processing import box_to_pixels, postprocess_mask_3d

from .conftest import TINY_OFFICIAL, need

CFG = PreprocessConfig()


def test_2d_preprocessing_reproduces_the_published_input_exactly():
    from PIL import Image
    from safetensors.torch import load_file

    folder = need(TINY_OFFICIAL)
    pixels = np.array(Image.open(folder / "image2d.png").convert("RGB"))
    expected = load_file(folder / "inputs.safetensors")["cxr2d/image"][0].float()
    assert torch.equal(preprocess_image(pixels, CFG), expected)


def test_ct_preprocessing_reproduces_the_published_input_exactly():
    import nibabel as nib
    from safetensors.torch import load_file

    folder = need(TINY_OFFICIAL)
    xyz = nib.load(folder / "ct_volume.nii.gz").get_fdata()  # NIfTI [x, y, z]
    expected = load_file(folder / "inputs.safetensors")["ct3d/image"].float()
    ours = preprocess_volume(xyz.transpose(2, 1, 0), CFG)  # our API takes [slices, rows, cols]
    assert torch.equal(ours, expected)


def test_image_preprocessing_gives_clip_normalised_224(rng):
    grey = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    out = preprocess_image(grey, CFG)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    white = preprocess_image(np.full((10, 10), 255, np.uint8), CFG)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CFG.mean, CFG.std, strict=False)])
    assert torch.allclose(white[:, 0, 0], expected, atol=0.02)


def test_volume_preprocessing_clips_hounsfield_units(rng):
    hu = rng.normal(0, 1000, (10, 20, 30))
    out = preprocess_volume(hu, CFG)
    assert out.shape == (1, 64, 192, 192)
    clipped = preprocess_volume(np.clip(hu, -200, 300), CFG)
    assert torch.equal(out, clipped)


def test_constant_volume_is_a_clear_error():
    with pytest.raises(ValueError, match="constant"):
        preprocess_volume(np.zeros((4, 4, 4)), CFG)


def test_2d_mask_keeps_the_largest_component_fills_holes_and_returns_source_size():
    logits = torch.full((224, 224), -5.0)
    logits[20:120, 20:120] = 5.0      # big square
    logits[60:70, 60:70] = -5.0       # hole inside it
    logits[200:210, 200:210] = 5.0    # small separate blob
    mask = postprocess_mask_2d(logits, (448, 336), CFG)
    assert mask.shape == (448, 336) and mask.dtype == bool
    assert mask[int(65 * 2), int(65 * 1.5)]          # hole filled
    assert not mask[205 * 2, int(205 * 1.5)]         # small blob dropped
    assert mask.sum() == pytest.approx(100 * 100 * 2 * 1.5, rel=0.05)


def test_empty_2d_mask_stays_empty():
    assert not postprocess_mask_2d(torch.full((224, 224), -1.0), (100, 120), CFG).any()


def test_3d_mask_returns_source_geometry_and_keeps_two_kidneys():
    logits = torch.full((64, 192, 192), -5.0)   # model layout [z, x, y]
    logits[10:30, 20:50, 100:140] = 5.0          # one kidney
    logits[10:30, 140:170, 100:140] = 5.0        # the other kidney
    mask = postprocess_mask_3d(logits, (32, 96, 128), CFG)  # source [slices, rows, cols]
    assert mask.shape == (32, 96, 128)
    from scipy import ndimage

    assert ndimage.label(mask)[1] == 2
    # x (model axis 1) is the source column axis; y (axis 2) the row axis
    cols = np.where(mask.any(axis=(0, 1)))[0]
    rows = np.where(mask.any(axis=(0, 2)))[0]
    assert cols.min() == pytest.approx(20 * 128 / 192, abs=1) and rows.min() == pytest.approx(100 * 96 / 192, abs=1)


def test_nearest_resize_matches_cv2_index_rule():
    a = np.arange(4)
    assert resize_nearest(a, (8,)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resize_nearest(a, (2,)).tolist() == [0, 2]


def test_boxes_are_clamped_ordered_and_scaled_to_source_pixels():
    assert box_to_pixels(torch.tensor([0.5, 0.25, 0.1, 1.3]), 200, 400) == pytest.approx((20, 100, 100, 400))
