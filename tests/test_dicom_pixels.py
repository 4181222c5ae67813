"""Display pixels and Hounsfield units: LUT chain, colour spaces, compressed syntaxes, bad data."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from medversa.dicom_mapping import PixelDataError
from medversa.dicom_mapping import pixels as pixels_mod
from medversa.dicom_mapping.pixels import display_frames, hounsfield

from . import dicom_factory as fac
from .conftest import SHARED, need

INPUTS = SHARED / "data" / "medinterp-mini" / "dicom" / "inputs"
SC_CXR = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


# --- real inputs -------------------------------------------------------------------------------


def test_real_jpeg2000_cr_decodes_to_display_shape():
    ds = pydicom.dcmread(need(INPUTS / "RG1_J2KI.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    frames = display_frames(ds)
    assert len(frames) == 1
    img = frames[0]
    assert img.shape == (1955, 1841) and img.dtype == np.uint8
    assert img.max() - img.min() > 150  # the window gives real contrast
    # MONOCHROME1: the film's lung fields are dark, the unexposed border bright.
    centre = img[600:1200, 300:700].mean()
    assert centre < img[-60:, :].mean()


def test_real_jpeg_baseline_secondary_capture_decodes():
    ds = pydicom.dcmread(need(INPUTS / SC_CXR))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    (img,) = display_frames(ds)
    assert img.shape == (1024, 1024) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255  # no window: min-max


def test_real_ct_hounsfield_range():
    ds = pydicom.dcmread(need(INPUTS / "dcmqi_ct-3slice_01.dcm"))
    hu = hounsfield(ds)
    assert hu.shape == (1, 512, 512) and hu.dtype == np.float32
    assert -3100 <= hu.min() and hu.max() < 4000
    # the body is mostly soft tissue around 0 HU, outside air around -1000
    assert np.median(hu) < -500 or np.percentile(hu, 75) > -200


# --- grey-scale pipeline -----------------------------------------------------------------------


def _one_bright_pixel(bits: int = 12) -> np.ndarray:
    arr = np.full((8, 8), 100, dtype=np.uint16)
    arr[0, 0] = 2**bits - 1
    return arr


def test_monochrome1_is_inverted():
    mono1 = fac.make_cr(pixels=_one_bright_pixel(), photometric="MONOCHROME1")
    mono2 = fac.make_cr(pixels=_one_bright_pixel(), photometric="MONOCHROME2")
    d1, d2 = display_frames(mono1)[0], display_frames(mono2)[0]
    assert d2[0, 0] == 255 and d2[1, 1] == 0
    assert d1[0, 0] == 0, "a bright-in-data pixel must display dark for MONOCHROME1"
    assert d1[1, 1] == 255
    np.testing.assert_array_equal(d1, 255 - d2)


def test_window_clips_outside_values():
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0..4080
    ds = fac.make_cr(pixels=ramp, window=(2048, 1000))
    img = display_frames(ds)[0]
    values = ramp[0]
    assert (img[0][values < 1540] == 0).all()
    assert (img[0][values > 2556] == 255).all()
    mid = img[0][values == 2048][0]
    assert 120 <= mid <= 135
    assert np.all(np.diff(img[0].astype(int)) >= 0)  # monotone


def test_first_window_is_used_when_several():
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (2, 1))
    ds = fac.make_cr(pixels=ramp)
    ds.WindowCenter = [1000, 3000]
    ds.WindowWidth = [200, 200]
    img = display_frames(ds)[0][0]
    assert img[ramp[0] == 1008][0] > 100 and img[ramp[0] == 3008][0] == 255


def test_modality_lut_applied_before_window():
    # CT stored values HU + 1024; window 40/400 is in HU.
    ct = fac.make_ct_series(2)[0]
    img = display_frames(ct)[0]
    stored = ct.pixel_array
    assert (img[stored == 24] == 0).all()  # -1000 HU is below the window
    tissue = img[stored == 1064]  # 40 HU: the window centre
    assert tissue.size and 120 <= int(tissue[0]) <= 135


def test_voi_lut_sequence_is_applied():
    arr = np.tile(np.arange(256, dtype=np.uint16), (2, 1))
    ds = fac.make_cr(pixels=arr, bits=8)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # a reversing LUT
    ds.VOILUTSequence = [item]
    img = display_frames(ds)[0]
    assert img[0, 0] == 255 and img[0, 255] == 0


def test_unusable_window_falls_back_to_min_max():
    arr = np.array([[500, 600], [700, 900]], dtype=np.uint16)
    ds = fac.make_cr(pixels=arr, window=(700, 0))  # LINEAR needs Window Width >= 1
    img = display_frames(ds)[0]
    assert img.min() == 0 and img.max() == 255


def test_display_does_not_change_the_dataset():
    ds = fac.make_ct_series(2)[0]
    before = {k: (type(ds[k].value), ds[k].value) for k in ("RescaleSlope", "BitsStored", "WindowCenter")}
    display_frames(ds)
    hounsfield(ds)
    assert {k: (type(ds[k].value), ds[k].value) for k in before} == before


def test_min_max_without_window():
    arr = np.array([[500, 600], [700, 900]], dtype=np.uint16)
    ds = fac.make_cr(pixels=arr)
    img = display_frames(ds)[0]
    assert img.min() == 0 and img.max() == 255 and img[0, 1] == 64


def test_multi_frame_gives_one_array_per_frame():
    stack = fac.chest_pixels(20, 16, frames=3)
    ds = fac.make_cr(pixels=stack, sop_class_uid=fac.MF_GRAYSCALE_WORD_SC, modality="DX")
    frames = display_frames(ds)
    assert len(frames) == 3 and all(f.shape == (20, 16) for f in frames)


# --- colour ------------------------------------------------------------------------------------


def test_rgb_kept():
    rgb = fac.colour_pixels(12, 10)
    frames = display_frames(fac.make_vl_photo(pixels=rgb))
    np.testing.assert_array_equal(frames[0], rgb)


def test_ybr_full_converted_to_rgb():
    rgb = fac.colour_pixels(12, 10)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = fac.make_vl_photo(pixels=ybr, photometric="YBR_FULL")
    out = display_frames(ds)[0]
    assert out.shape == (12, 10, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 2


def test_jpeg2000_colour_not_converted_twice():
    rgb = fac.colour_pixels(64, 64)  # OpenJPEG's default resolutions need >= 32 pixels
    ds = fac.make_vl_photo(pixels=rgb)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(display_frames(ds)[0], rgb)


def test_palette_color():
    idx = np.tile(np.arange(256, dtype=np.uint8), (2, 1))
    ds = fac.make_vl_photo(pixels=idx, photometric="PALETTE COLOR", modality="OT")
    ramp = (np.arange(256, dtype=np.uint16) * 257)
    for colour, data in (("Red", ramp), ("Green", ramp[::-1].copy()), ("Blue", np.zeros(256, np.uint16))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", data.tobytes())
    out = display_frames(ds)[0]
    assert out.shape == (2, 256, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (0, 255, 0) and tuple(out[0, 255]) == (255, 0, 0)


# --- compressed transfer syntaxes -------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_grey_decodes_identically(syntax):
    ds = fac.make_cr(rows=64, cols=48, window=(2000, 3000))
    expected = display_frames(ds)[0]
    ds.compress(syntax, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(display_frames(ds)[0], expected)


def test_rle_colour_decodes():
    rgb = fac.colour_pixels(10, 14)
    ds = fac.make_vl_photo(pixels=rgb)
    ds.compress(RLELossless, generate_instance_uid=False)
    np.testing.assert_array_equal(display_frames(ds)[0], rgb)


def test_deflated_file_decodes(tmp_path):
    ds = fac.make_cr(rows=16, cols=16)
    expected = display_frames(ds)[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(display_frames(back)[0], expected)


# --- bad pixel data ----------------------------------------------------------------------------


def test_memory_bomb_rejected_before_decoding(monkeypatch):
    ds = fac.make_cr(rows=4, cols=4)
    ds.Rows = ds.Columns = 60000
    ds.PixelData = b"\x00" * 16

    def _no_decoding(*args, **kwargs):
        raise AssertionError("the decoder must not be reached")

    monkeypatch.setattr(pixels_mod, "get_decoder", _no_decoding)
    with pytest.raises(PixelDataError, match=r"60000.*over the limit") as err:
        display_frames(ds)
    assert ds.SOPInstanceUID in str(err.value)


def test_total_size_bomb_rejected():
    ds = fac.make_cr(rows=4, cols=4)
    ds.Rows = ds.Columns = 9000
    ds.NumberOfFrames = 50
    ds.PixelData = b"\x00" * 16
    with pytest.raises(PixelDataError, match="bytes decoded, over the limit"):
        display_frames(ds)


def test_short_native_pixel_data():
    ds = fac.make_cr(rows=32, cols=32)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(PixelDataError, match="fewer than") as err:
        display_frames(ds)
    assert ds.SOPInstanceUID in str(err.value)


def test_rows_disagreeing_with_compressed_data():
    ds = fac.make_cr(rows=16, cols=16)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.Rows = 64
    with pytest.raises(PixelDataError, match=ds.SOPInstanceUID):
        display_frames(ds)


def test_truncated_compressed_pixel_data():
    ds = fac.make_cr(rows=32, cols=32)
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    ds.PixelData = ds.PixelData[:40]
    with pytest.raises(PixelDataError, match=ds.SOPInstanceUID):
        display_frames(ds)


def test_missing_pixel_data_and_unknown_syntax():
    ds = fac.make_cr()
    del ds.PixelData
    with pytest.raises(PixelDataError, match="no Pixel Data"):
        display_frames(ds)
    ds = fac.make_cr()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    with pytest.raises(PixelDataError, match="1.2.3.4.5"):
        display_frames(ds)


def test_hounsfield_needs_rescale_and_is_float32():
    with pytest.raises(PixelDataError, match="Hounsfield"):
        hounsfield(fac.make_cr())
    hu = hounsfield(fac.make_ct_series(2)[1])
    assert hu.dtype == np.float32 and set(np.unique(hu)) == {-1000.0, 41.0}
