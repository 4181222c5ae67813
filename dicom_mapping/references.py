"""What the model saw, and where it came from: prepared inputs with references to their sources.

These dataclasses cross from the DICOM-in side (:mod:`.inputs`) to the pipeline
and on to the result builders (SR, SEG, presentation states), which need the
source identity and geometry to map boxes and masks back (PS3.3 C.7.6.1 General
Image, C.7.6.2 Image Plane).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from medversa.inference import ClinicalContext

from .orientation import AS_STORED, Reorientation


class SeriesKind(str, Enum):
    """What a series is, for routing and for choosing the model's modality."""

    CHEST_RADIOGRAPH = "chest_radiograph"
    DERMOSCOPY = "dermoscopy"
    ABDOMINAL_CT = "abdominal_ct"
    CT = "ct"  # CT without abdominal coverage: no abdominal organ segmentation


class View(str, Enum):
    """Chest radiograph projection (ViewPosition, PS3.3 C.8.11.5 / C.8.19.6)."""

    FRONTAL = "frontal"
    LATERAL = "lateral"


@dataclass(frozen=True)
class ImageRef:
    """One 2D image (or one frame of a multi-frame image) the model saw as ``<imgN>``."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    rows: int
    cols: int
    #: 1-based frame number in a multi-frame instance; None for a single-frame instance.
    frame: int | None = None
    #: (row spacing, column spacing) in mm: PixelSpacing, else ImagerPixelSpacing; None if unknown.
    pixel_spacing: tuple[float, float] | None = None
    frame_of_reference_uid: str | None = None
    modality: str = ""


@dataclass(frozen=True)
class VolumeRef:
    """A CT series as one volume: slice k of the array is ``sop_instance_uids[k]``."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str
    #: ImageOrientationPatient (row cosines, column cosines).
    image_orientation: tuple[float, float, float, float, float, float]
    #: ImagePositionPatient of every slice, in array order.
    image_positions: tuple[tuple[float, float, float], ...]
    #: (row spacing, column spacing) in mm.
    pixel_spacing: tuple[float, float]
    #: Distance between slice centres along the normal, in mm.
    slice_spacing: float
    rows: int
    cols: int
    #: 1-based frame numbers when the volume comes from one multi-frame (Enhanced CT) instance.
    frames: tuple[int, ...] | None = None


@dataclass
class PreparedImage:
    """A 2D image ready for the model: display pixels (uint8) and its reference."""

    ref: ImageRef
    pixels: np.ndarray  # uint8 [rows, cols] or [rows, cols, 3]
    kind: SeriesKind
    view: View | None = None
    #: View Position as training names it ("PA", "AP", "AP supine", "lateral"); None when not stated.
    projection: str | None = None
    #: How ``pixels`` (as stored) are turned for the model; its masks and boxes are turned back.
    orientation: Reorientation = AS_STORED

    def model_pixels(self) -> np.ndarray:
        """The pixels as the model reads them (a chest film hung head up, the patient's left on the right)."""
        return self.orientation.to_model(self.pixels)


@dataclass
class PreparedVolume:
    """A CT volume ready for the model: Hounsfield units [slices, rows, cols] and its reference."""

    ref: VolumeRef
    hu: np.ndarray  # float32 [slices, rows, cols]
    kind: SeriesKind


@dataclass
class Skipped:
    """An instance or series we do not process, and why (logged, never a crash)."""

    sop_instance_uid: str
    series_instance_uid: str
    reason: str
    #: For the study's reader, when the image is one the node was sent to read and left out (a
    #: decubitus film, one whose sides are unknown, pixels it could not decode): "a decubitus film
    #: (ViewPosition LLD)". None for what no one expects read (an SR, a knee film, a CT localizer).
    reader_note: str | None = None


@dataclass
class StudyInputs:
    """Everything usable in one study, plus what was skipped and why."""

    study_instance_uid: str
    images: list[PreparedImage] = field(default_factory=list)
    #: Age, sex and indication from the headers (the view is per request: its images' projections).
    clinical: ClinicalContext = field(default_factory=ClinicalContext)
    #: Study Date (YYYYMMDD) and Study Description, as a comparison names its prior study.
    study_date: str = ""
    study_description: str = ""
    volumes: list[PreparedVolume] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
