"""NIfTI volumes in the layout the rest of the code uses.

The published model read NIfTI arrays ``[x, y, z]``; everything here hands
volumes over as ``[slices, rows, cols]`` (DICOM order, ``array.transpose(2, 1,
0)``), which :func:`medversa.inference.processing.preprocess_volume` transposes
back, so a NIfTI file is preprocessed exactly as the published code did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RecordError


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    if not path.is_file():
        raise RecordError(path, None, "file not found")
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types for broken files
        raise RecordError(path, None, f"not a readable NIfTI volume ({exc})") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise RecordError(path, None, f"expected a 3D volume, got shape {data.shape}")
    return data


def read_nifti_volume(path: Path) -> np.ndarray:
    """CT intensities (Hounsfield units after the file's scaling) as float32 [slices, rows, cols]."""
    return np.ascontiguousarray(_load(Path(path)).astype(np.float32).transpose(2, 1, 0))


def read_nifti_labels(path: Path) -> np.ndarray:
    """An integer label volume as [slices, rows, cols]."""
    data = _load(Path(path))
    return np.ascontiguousarray(np.rint(data).astype(np.int32).transpose(2, 1, 0))
