"""Synthetic studies for the node's benchmarks: chest CRs with noise pixels (realistic size, no
patient data), a corpus of them on disk, and the answers planted into a random-weight model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def synthetic_cr(study_uid: str, index: int, size: int = 512, patient: str = "BENCH") -> Dataset:
    """A chest CR with 12-bit noise pixels (realistic size, no patient data)."""
    rng = np.random.default_rng(index)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series"])
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Bench^Synthetic", patient, "O", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = 1, index + 1, ["L", "F"]
    ds.PixelSpacing = [0.2, 0.2]
    ds.set_pixel_data(rng.integers(0, 4096, (size, size), dtype=np.uint16), "MONOCHROME2", 12,
                      generate_instance_uid=False)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_corpus(folder: Path, instances: int, per_study: int = 1, size: int = 512) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study = generate_uid()
    for i in range(instances):
        if i % per_study == 0:
            study = generate_uid()
        ds = synthetic_cr(study, i, size, patient=f"BENCH{i // per_study}")
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths



#: Planted answers for the e2e benchmark: the random-weight demo model never emits the end
#: symbol, so free decoding would always run to max_new_tokens (450) for every task.
E2E_SCRIPT = {
    "report_findings": "The lungs are clear. There is no pleural effusion or pneumothorax. The heart size is normal.",
    "report_impression": "No acute cardiopulmonary process.",
    "chest_pathology_classification": "No finding.",
    "pathology_detection": "pleural effusion <N/A>, pneumothorax <N/A>, lung opacity <DET>.",
    "chest_organ_segmentation": "The segmentation mask of {target} is <2DSEG>.",
    "longitudinal_comparison": "No change since the prior study.",
}

