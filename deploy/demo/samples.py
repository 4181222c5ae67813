#!/usr/bin/env python3
"""Write the demonstration's sample studies: a chest radiograph (CR) and an abdominal CT series.

Synthetic images (no patient data, nothing downloaded): a radiograph-like chest with two dark
lung fields and a CT with a round body of soft tissue, each a valid DICOM study of its own for the
demo patient "MEDVERSA^DEMO". The node routes the CR to the chest tasks and the CT (Body Part
Examined ABDOMEN) to abdominal organ segmentation.

Usage: samples.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

ROOT = "1.2.826.0.1.3680043.10.1462.9."  # demo studies: fixed UIDs, so re-running overwrites them
CR, CT = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.2"


def _base(sop_class: str, modality: str, study: str, series: str, sop: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "MEDVERSA^DEMO", "MEDVERSA-DEMO", "19600101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "090000", "1", "DEMO1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "medversa-node demo"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, number
    ds.PatientOrientation = ""
    return ds


def _pixels(ds: Dataset, arr: np.ndarray) -> None:
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()


def chest() -> list[Dataset]:
    rows = cols = 512
    y, x = np.mgrid[0:rows, 0:cols]
    img = np.full((rows, cols), 2800.0)
    for cx in (0.32 * cols, 0.68 * cols):
        img -= 1700 * (((x - cx) / (0.15 * cols)) ** 2 + ((y - 0.48 * rows) / (0.3 * rows)) ** 2 < 1)
    img += np.random.default_rng(0).normal(0, 30, img.shape)
    ds = _base(CR, "CR", ROOT + "1", ROOT + "1.1", ROOT + "1.1.1", 1)
    ds.StudyDescription, ds.SeriesDescription = "Chest PA (demo)", "PA chest"
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.PixelSpacing = [0.35, 0.35]
    ds.WindowCenter, ds.WindowWidth = 1900, 2800
    _pixels(ds, np.clip(img, 0, 4095))
    return [ds]


def abdomen_ct(slices: int = 24) -> list[Dataset]:
    rows = cols = 128
    y, x = np.mgrid[0:rows, 0:cols]
    body = ((x - 64) ** 2 + (y - 64) ** 2) < 56 ** 2
    liver = ((x - 44) ** 2 / 22 ** 2 + (y - 56) ** 2 / 18 ** 2) < 1
    frame_of_reference = ROOT + "2.9"
    out = []
    for k in range(slices):
        hu = np.where(body, 40.0, -1000.0) + np.where(liver, 20.0, 0.0)
        hu += np.random.default_rng(k).normal(0, 8, hu.shape)
        ds = _base(CT, "CT", ROOT + "2", ROOT + "2.1", f"{ROOT}2.1.{k + 1}", k + 1)
        ds.StudyDescription, ds.SeriesDescription = "CT abdomen (demo)", "Abdomen axial"
        ds.BodyPartExamined, ds.ImageType = "ABDOMEN", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-160.0, -160.0, -60.0 + 5.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [2.5, 2.5], 5.0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth, ds.KVP, ds.AcquisitionNumber = 40, 400, 120, 1
        _pixels(ds, np.clip(hu + 1024, 0, 4095))
        out.append(ds)
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "samples")
    out.mkdir(parents=True, exist_ok=True)
    for ds in chest() + abdomen_ct():
        ds.save_as(out / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
