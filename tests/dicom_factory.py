"""Build small, valid DICOM test data sets in memory (pydicom only, no files needed).

Every data set has file meta information (Explicit VR Little Endian unless compressed later), a
correct SOP class, fresh study/series/SOP UIDs from :func:`pydicom.uid.generate_uid` unless given,
and a fake patient name/ID (so tests can check that they never reach the logs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

PATIENT_NAME = "Testpatient^Secret"
PATIENT_ID = "SECRET-PID-0001"


def base_dataset(
    sop_class_uid: str,
    modality: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
) -> Dataset:
    """Patient, study, series and SOP common attributes plus file meta information."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    return ds


def set_pixels(ds: Dataset, arr: np.ndarray, photometric: str, bits_stored: int | None = None) -> Dataset:
    """Store ``arr`` natively ([rows, cols], [frames, rows, cols] or [..., 3]) with pydicom's helper."""
    arr = np.ascontiguousarray(arr)
    if bits_stored is None:
        bits_stored = arr.dtype.itemsize * 8
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    return ds


def chest_pixels(rows: int, cols: int, bits: int = 12, frames: int = 1, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise, in [0, 2**bits - 1], uint16 (or uint8 for bits <= 8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = (x + y) / max(rows + cols - 2, 1) * (2**bits - 1)
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    noise = rng.normal(0, 2**bits / 64, size=shape)
    arr = np.clip(base + noise, 0, 2**bits - 1)
    return arr.astype(np.uint8 if bits <= 8 else np.uint16)


def make_cr(
    rows: int = 64,
    cols: int = 64,
    *,
    pixels: np.ndarray | None = None,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    view_position: str | None = "PA",
    body_part: str | None = "CHEST",
    modality: str = "CR",
    sop_class_uid: str = CR_IMAGE,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = (0.2, 0.2),
    imager_pixel_spacing: tuple[float, float] | None = None,
    **attrs: object,
) -> Dataset:
    """A chest radiograph (CR Image Storage by default; any CR/DX/SC class via ``sop_class_uid``).

    ``pixels`` may be [frames, rows, cols] for a multi-frame image (use a multi-frame SOP class).
    Extra keyword arguments are set as attributes (e.g. ``SeriesDescription="LAT"``).
    """
    ds = base_dataset(sop_class_uid, modality, **{k: attrs.pop(k) for k in list(attrs)
                                                   if k in ("study_uid", "series_uid", "sop_uid",
                                                            "series_number", "instance_number")})
    if pixels is None:
        pixels = chest_pixels(rows, cols, bits)
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    ds.PatientOrientation = ["L", "F"]
    set_pixels(ds, pixels, photometric, bits)
    for key, val in attrs.items():
        setattr(ds, key, val)
    return ds


def make_vl_photo(
    rows: int = 48,
    cols: int = 64,
    *,
    pixels: np.ndarray | None = None,
    photometric: str = "RGB",
    modality: str = "XC",
    body_part: str | None = "SKIN",
    sop_class_uid: str = VL_PHOTOGRAPHIC,
    **attrs: object,
) -> Dataset:
    """An RGB skin photograph (VL Photographic Image Storage, Modality XC, BodyPartExamined SKIN)."""
    ds = base_dataset(sop_class_uid, modality, **{k: attrs.pop(k) for k in list(attrs)
                                                   if k in ("study_uid", "series_uid", "sop_uid",
                                                            "series_number", "instance_number")})
    if pixels is None:
        pixels = colour_pixels(rows, cols)
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    set_pixels(ds, pixels, photometric, 8)
    for key, val in attrs.items():
        setattr(ds, key, val)
    return ds


def colour_pixels(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 test image: red ramp across, green ramp down, blue noise."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((rows, cols, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, cols, dtype=np.float64)[None, :].astype(np.uint8)
    arr[..., 1] = np.linspace(0, 255, rows, dtype=np.float64)[:, None].astype(np.uint8)
    arr[..., 2] = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    return arr


def ct_slice_pixels(rows: int, cols: int, k: int) -> np.ndarray:
    """Stored values (HU + 1024) of a disc of 'tissue' (40 HU) in 'air' (-1000 HU), plus k."""
    y, x = np.mgrid[0:rows, 0:cols]
    disc = (y - rows / 2) ** 2 + (x - cols / 2) ** 2 < (min(rows, cols) / 3) ** 2
    hu = np.where(disc, 40 + k, -1000).astype(np.int32)
    return (hu + 1024).astype(np.uint16)


def make_ct_series(
    n: int = 5,
    spacing: float = 2.5,
    *,
    rows: int = 16,
    cols: int = 16,
    origin: Sequence[float] = (-100.0, -100.0, 50.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.8, 0.8),
    body_part: str | None = "ABDOMEN",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    positions: Iterable[Sequence[float]] | None = None,
    **attrs: object,
) -> list[Dataset]:
    """A single-frame CT Image Storage series stacked along the normal of ``orientation``.

    Slice k sits at ``origin + k * spacing * normal`` (or at ``positions[k]``); instance numbers
    run 1..n in slice order. Pixel values are ``HU + 1024`` with RescaleIntercept -1024.
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = generate_uid()
    ori = np.asarray(orientation, dtype=float)
    normal = np.cross(ori[:3], ori[3:])
    pos_list = [list(map(float, p)) for p in positions] if positions is not None else [
        list(np.asarray(origin, dtype=float) + k * spacing * normal) for k in range(n)
    ]
    out = []
    for k, pos in enumerate(pos_list):
        ds = base_dataset(CT_IMAGE, "CT", study_uid=study_uid, series_uid=series_uid,
                          series_number=series_number, instance_number=k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        if body_part is not None:
            ds.BodyPartExamined = body_part
        ds.SeriesDescription = "test CT"
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = abs(spacing)
        ds.GantryDetectorTilt = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.KVP = 120
        set_pixels(ds, ct_slice_pixels(rows, cols, k), "MONOCHROME2", 12)
        for key, val in attrs.items():
            setattr(ds, key, val)
        out.append(ds)
    return out


def make_enhanced_ct(
    n: int = 4,
    spacing: float = 3.0,
    *,
    rows: int = 16,
    cols: int = 16,
    origin: Sequence[float] = (-50.0, -50.0, 0.0),
    frame_order: Sequence[int] | None = None,
    body_part: str = "ABDOMEN",
) -> Dataset:
    """One Enhanced CT Image Storage instance; frame i is at slice ``frame_order[i]`` (default i)."""
    ds = base_dataset(ENHANCED_CT, "CT")
    ds.FrameOfReferenceUID = generate_uid()
    ds.BodyPartExamined = body_part
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    order = list(frame_order) if frame_order is not None else list(range(n))
    stack = np.stack([ct_slice_pixels(rows, cols, k) for k in order])
    set_pixels(ds, stack, "MONOCHROME2", 12)

    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = [ori]
    meas = Dataset()
    meas.PixelSpacing = [0.7, 0.7]
    meas.SliceThickness = spacing
    shared.PixelMeasuresSequence = [meas]
    pvt = Dataset()
    pvt.RescaleIntercept = -1024
    pvt.RescaleSlope = 1
    pvt.RescaleType = "HU"
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def write_datasets(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write each data set as ``<SOPInstanceUID>.dcm`` in ``folder`` (created), return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
