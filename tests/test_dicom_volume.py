"""CT series -> volume: sorting along the normal, HU, geometry checks."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medversa.dicom_mapping import SeriesKind
from medversa.dicom_mapping.volume import VolumeError, build_volume

from . import dicom_factory as fac
from .conftest import SHARED, need

MINI = SHARED / "data" / "medinterp-mini"


def _shuffled(datasets, seed=0):
    out = list(datasets)
    random.Random(seed).shuffle(out)
    return out


# --- real data -----------------------------------------------------------------------------------


def test_real_ct_series_builds_sorted_volume():
    files = sorted(need(MINI / "ct" / "dicom").glob("*.dcm"))
    assert len(files) == 20
    datasets = _shuffled(pydicom.dcmread(f) for f in files)
    vol = build_volume(datasets)
    assert vol.hu.shape == (20, 512, 512) and vol.hu.dtype == np.float32
    assert vol.kind == SeriesKind.CT
    assert -1100 <= vol.hu.min() and vol.hu.max() <= 3100
    assert -1000 < float(vol.hu.mean()) < 200
    z = [p[2] for p in vol.ref.image_positions]
    assert np.all(np.diff(z) > 0)  # normal (0, 0, 1): ascending z
    assert vol.ref.slice_spacing == pytest.approx(2.0)
    assert vol.ref.pixel_spacing == pytest.approx((0.9765625, 0.9765625))
    assert len(set(vol.ref.sop_instance_uids)) == 20  # from the file meta: the data set's UIDs are blank
    # array order follows the positions: slice k's header position is image_positions[k]
    by_uid = {ds.file_meta.MediaStorageSOPInstanceUID: ds for ds in datasets}
    for k in (0, 7, 19):
        ds = by_uid[vol.ref.sop_instance_uids[k]]
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(z[k])
        np.testing.assert_array_equal(vol.hu[k], ds.pixel_array.astype(np.float32) - 1024)


def test_real_three_slice_ct():
    inputs = MINI / "dicom" / "inputs"
    files = [need(inputs / f"dcmqi_ct-3slice_0{i}.dcm") for i in (3, 1, 2)]
    vol = build_volume([pydicom.dcmread(f) for f in files])
    assert vol.hu.shape == (3, 512, 512)
    assert vol.ref.slice_spacing == pytest.approx(1.0)
    assert [round(p[2], 2) for p in vol.ref.image_positions] == [-128.69, -127.69, -126.69]


# --- synthetic series --------------------------------------------------------------------------


def test_sorted_by_position_not_instance_number():
    series = fac.make_ct_series(6, 2.5)
    for ds, number in zip(series, [4, 1, 6, 2, 5, 3], strict=True):
        ds.InstanceNumber = number
    vol = build_volume(_shuffled(series))
    # slice k was built with HU 40 + k in its disc
    assert [float(vol.hu[k].max()) for k in range(6)] == [40 + k for k in range(6)]
    assert vol.ref.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in series)
    assert vol.ref.rows == 16 and vol.ref.cols == 16 and vol.ref.frames is None
    assert vol.ref.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert vol.kind == SeriesKind.ABDOMINAL_CT


def test_sorting_uses_the_normal_of_oblique_and_flipped_orientations():
    # column cosine (0, -1, 0): normal = (1,0,0) x (0,-1,0) = (0, 0, -1), so z decreases
    series = fac.make_ct_series(4, 3.0, orientation=(1, 0, 0, 0, -1, 0))
    vol = build_volume(_shuffled(series, 3))
    z = [p[2] for p in vol.ref.image_positions]
    assert np.all(np.diff(z) < 0)
    assert vol.ref.slice_spacing == pytest.approx(3.0)
    # sagittal: rows along y, columns along -z; normal (0,1,0) x (0,0,-1) = (-1, 0, 0)
    sag = fac.make_ct_series(4, 1.5, orientation=(0, 1, 0, 0, 0, -1))
    vol = build_volume(_shuffled(sag, 4))
    assert np.all(np.diff([p[0] for p in vol.ref.image_positions]) < 0)
    # oblique: 30 degrees about x
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    obl = fac.make_ct_series(5, 2.0, orientation=(1, 0, 0, 0, c, s))
    vol = build_volume(_shuffled(obl, 5))
    normal = np.cross([1, 0, 0], [0, c, s])
    along = [normal @ np.asarray(p) for p in vol.ref.image_positions]
    assert np.allclose(np.diff(along), 2.0, atol=1e-4)
    assert vol.ref.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in obl)


def test_enhanced_ct_frames_sorted():
    ds = fac.make_enhanced_ct(4, frame_order=[2, 0, 3, 1])
    vol = build_volume([ds])
    assert vol.hu.shape == (4, 16, 16)
    assert vol.ref.frames == (2, 4, 1, 3)
    assert vol.ref.sop_instance_uids == (ds.SOPInstanceUID,) * 4
    assert [p[2] for p in vol.ref.image_positions] == [0.0, 3.0, 6.0, 9.0]
    assert [float(vol.hu[k].max()) for k in range(4)] == [40, 41, 42, 43]
    assert vol.ref.pixel_spacing == (0.7, 0.7)


def test_kind_follows_body_part():
    assert build_volume(fac.make_ct_series(3, body_part="HEAD")).kind == SeriesKind.CT
    assert build_volume(fac.make_ct_series(3, body_part="CHESTABDPELVIS")).kind == SeriesKind.ABDOMINAL_CT


# --- errors ----------------------------------------------------------------------------------------


def test_too_few_slices():
    with pytest.raises(VolumeError, match="fewer than 2 slices"):
        build_volume(fac.make_ct_series(1))
    with pytest.raises(VolumeError, match="fewer than"):
        build_volume([])


def test_missing_slice():
    series = fac.make_ct_series(6)
    del series[3]
    with pytest.raises(VolumeError, match="missing slice"):
        build_volume(series)


def test_non_uniform_spacing():
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.5, 6.5, 8.5)]
    with pytest.raises(VolumeError, match="non-uniform slice spacing"):
        build_volume(fac.make_ct_series(positions=positions))


def test_duplicate_slice():
    series = fac.make_ct_series(4)
    copy = fac.make_ct_series(4, study_uid=series[0].StudyInstanceUID,
                              series_uid=series[0].SeriesInstanceUID)[2]
    copy.FrameOfReferenceUID = series[0].FrameOfReferenceUID
    with pytest.raises(VolumeError, match="duplicate slice"):
        build_volume(series + [copy])


def test_mixed_orientations():
    series = fac.make_ct_series(4)
    series[2].ImageOrientationPatient = [1, 0, 0, 0, 0.99, 0.14]
    with pytest.raises(VolumeError, match="mixed orientations"):
        build_volume(series)


def test_gantry_tilt_from_positions():
    # each slice shifted 0.5 mm in y per 2.5 mm in z: a tilted acquisition with untilted cosines
    positions = [(0, 0.5 * k, 2.5 * k) for k in range(5)]
    with pytest.raises(VolumeError, match="gantry tilt"):
        build_volume(fac.make_ct_series(positions=positions))


def test_gantry_tilt_attribute():
    series = fac.make_ct_series(4)
    for ds in series:
        ds.GantryDetectorTilt = 12.5
    with pytest.raises(VolumeError, match="GantryDetectorTilt is 12.5"):
        build_volume(series)


def test_differing_sizes():
    series = fac.make_ct_series(4)
    fac.set_pixels(series[1], fac.ct_slice_pixels(20, 16, 1), "MONOCHROME2", 12)
    with pytest.raises(VolumeError, match="differing Rows/Columns"):
        build_volume(series)


def test_differing_pixel_spacing():
    series = fac.make_ct_series(4)
    series[3].PixelSpacing = [0.9, 0.9]
    with pytest.raises(VolumeError, match="differing PixelSpacing"):
        build_volume(series)


def test_different_series_or_frame_of_reference():
    series = fac.make_ct_series(4)
    series[1].SeriesInstanceUID = generate_uid()
    with pytest.raises(VolumeError, match="SeriesInstanceUID"):
        build_volume(series)
    series = fac.make_ct_series(4)
    series[1].FrameOfReferenceUID = generate_uid()
    with pytest.raises(VolumeError, match="FrameOfReferenceUID"):
        build_volume(series)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry(keyword):
    series = fac.make_ct_series(3)
    delattr(series[1], keyword)
    with pytest.raises(VolumeError, match=keyword):
        build_volume(series)


def test_broken_pixel_data_is_a_volume_error():
    series = fac.make_ct_series(3)
    series[1].PixelData = series[1].PixelData[:10]
    with pytest.raises(VolumeError, match="pixel data"):
        build_volume(series)
