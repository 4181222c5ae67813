"""AbdomenCT-1K: liver, kidney, spleen and pancreas masks on abdominal CT (Ma et al., TPAMI 2022).

Layout (as released with the JunMa11/AbdomenCT-1K repository)::

    <root>/Image/Case_00001_0000.nii.gz   CT volume (the ``_0000`` channel suffix of nnU-Net naming)
    <root>/Mask/Case_00001.nii.gz         labels: 1 liver, 2 kidney, 3 spleen, 4 pancreas

Images are also found in the ``AbdomenCT-1K-ImagePart*/`` folders the image
zips unpack to. Every case with a mask is a record (991 in the paper); the
paper split them 9:1 at random into training and validation, which here is a
fixed hash of the case id ("train" / "validation"). Resizing to
192x192x64 and HU clipping belong to preprocessing, not to the reader.
"""

from __future__ import annotations

import re
from pathlib import Path

from medversa.inference import Modality

from ..records import LabelVolumeMask, RecordError, SegmentationRecord, VolumeFile
from ..vocabulary import ABDOMEN_ORGANS
from .common import check_split, hashed_split

SOURCE = "abdomenct-1k"
SPLITS = ("train", "validation")
_CASE = re.compile(r"^Case_\d{5}$")


def read_abdomenct1k(root: Path, split: str | None = None) -> list[SegmentationRecord]:
    """One 3D segmentation record per masked case of ``split`` ("train", "validation"; None: all)."""
    check_split(split, SPLITS, "AbdomenCT-1K")
    root = Path(root)
    mask_folder = root / "Mask"
    if not mask_folder.is_dir():
        raise RecordError(mask_folder, None, "mask folder not found")
    image_folders = [root / "Image", *sorted(root.glob("AbdomenCT-1K-ImagePart*"))]
    records = []
    for mask in sorted(mask_folder.glob("*.nii.gz")):
        case = mask.name.removesuffix(".nii.gz")
        if not _CASE.match(case):
            raise RecordError(mask, None, "not an AbdomenCT-1K mask name (Case_NNNNN.nii.gz)")
        case_split = hashed_split(f"abdomenct-1k/{case}", names=SPLITS)
        if split is not None and case_split != split:
            continue
        images = [folder / f"{case}_0000.nii.gz" for folder in image_folders]
        image = next((p for p in images if p.is_file()), None)
        if image is None:
            raise RecordError(mask, case, f"no image {case}_0000.nii.gz in {', '.join(str(f) for f in image_folders)}")
        masks = {organ: LabelVolumeMask(mask, values) for organ, values in ABDOMEN_ORGANS.items()}
        records.append(SegmentationRecord(SOURCE, case, Modality.CT, case_split, VolumeFile(image), masks))
    return records
