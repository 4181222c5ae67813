"""What dataset readers yield: one record per annotated image (or study), before prompts.

Readers (``training/datasets/``) only translate a dataset's published files into
these records; they never choose templates, augment or tokenise. The sample
builder (``training/samples.py``) turns records into instruction samples as the
paper does. Keeping the two apart lets each reader be tested on a fixture in its
dataset's exact format and lets one builder serve every source.

Coordinates are pixels of the referenced image (x0, y0 top-left; x1, y1
bottom-right). Masks and images are loaded lazily through small picklable
sources so a record list of a large dataset stays cheap.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medversa.inference import ClinicalContext, Modality, PixelBox

from .errors import RecordError
from .nifti import read_nifti_labels, read_nifti_volume
from .rle import decode_start_length


# --- lazy image and mask sources -----------------------------------------------------------------
@dataclass(frozen=True)
class ImageFile:
    """A 2D image file (PNG/JPEG), read as uint8 display pixels [H, W] or [H, W, 3]."""

    path: Path

    def load(self) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.path) as image:
                mode = "RGB" if image.mode not in ("L", "I;16", "I") else "L"
                pixels = np.asarray(image.convert(mode))
        except (OSError, ValueError) as exc:
            raise RecordError(self.path, None, f"unreadable image ({exc})") from exc
        return pixels


@dataclass(frozen=True)
class VolumeFile:
    """A NIfTI CT volume, read as Hounsfield units [slices, rows, cols] (DICOM order)."""

    path: Path

    def load(self) -> np.ndarray:
        return read_nifti_volume(self.path)


@dataclass(frozen=True)
class MaskFile:
    """A binary mask image (non-zero = inside), same size as its image."""

    path: Path

    def load(self) -> np.ndarray:
        return _binary(ImageFile(self.path).load())


@dataclass(frozen=True)
class LabelVolumeMask:
    """The voxels of a label volume (NIfTI) whose value is in ``values``."""

    path: Path
    values: tuple[int, ...]

    def load(self) -> np.ndarray:
        return np.isin(read_nifti_labels(self.path), self.values)


@dataclass(frozen=True)
class RleMask:
    """A run-length encoded mask: CheXmask's "start length ..." text, row-major, 1-based."""

    rle: str
    height: int
    width: int

    def load(self) -> np.ndarray:
        return decode_start_length(self.rle, self.height, self.width)


@dataclass(frozen=True)
class CsvRleMask:
    """One RLE cell of a large CSV (CheXmask), re-read from its row's byte offset when loaded.

    CheXmask's MIMIC-CXR table holds gigabytes of RLE text; keeping only the
    offset keeps a record list small. ``column`` is the cell's index in the row.
    """

    path: Path
    offset: int
    column: int
    height: int
    width: int

    def load(self) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            line = fh.readline().decode("utf-8")
        row = next(csv.reader([line]), [])
        if len(row) <= self.column:
            raise RecordError(self.path, f"byte {self.offset}", f"no column {self.column} in this row")
        try:
            return decode_start_length(row[self.column], self.height, self.width)
        except ValueError as exc:
            raise RecordError(self.path, f"byte {self.offset}", f"bad RLE ({exc})") from exc


@dataclass(frozen=True)
class ArrayImage:
    """An image or volume held in memory (synthetic benchmarks, tests)."""

    array: np.ndarray

    def load(self) -> np.ndarray:
        return self.array


@dataclass(frozen=True)
class ArrayMask:
    """A mask held in memory (tests, small fixtures)."""

    array: np.ndarray

    def load(self) -> np.ndarray:
        return np.asarray(self.array, dtype=bool)


def _binary(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3:
        pixels = pixels.max(axis=-1)
    return pixels > 0


ImageSource = ImageFile | VolumeFile | ArrayImage
MaskSource = MaskFile | LabelVolumeMask | RleMask | CsvRleMask | ArrayMask


# --- records per task family ---------------------------------------------------------------------
@dataclass
class Record:
    """Fields every record has."""

    source: str  # dataset name, e.g. "mimic-cxr", "medinterp-mini/cxr-organs"
    record_id: str  # the dataset's own id (study id, image id)
    modality: Modality
    split: str  # "train", "validate", "test", "holdout"... as the dataset names it


@dataclass
class ReportRecord(Record):
    """Report generation: one study's images and its report sections."""

    images: list[ImageSource] = field(default_factory=list)
    findings: str = ""
    impression: str = ""
    #: Age, sex, view, indication...: rendered into <context> by inference.context.render_context.
    context: ClinicalContext | None = None


@dataclass
class TextRecord(Record):
    """Report text without images (language-side training: IU X-ray texts without their images)."""

    findings: str = ""
    impression: str = ""


@dataclass
class ClassificationRecord(Record):
    """Image-level diagnoses: the answer names the present classes (empty: "no finding")."""

    image: ImageSource | None = None
    labels: list[str] = field(default_factory=list)
    context: ClinicalContext | None = None
    #: The classes ``labels`` were checked against (empty: every class of the modality). A source
    #: labelled for fewer classes (CheXpert: 9 of the 33) names them, so absence means "not present".
    candidates: tuple[str, ...] = ()


@dataclass
class DetectionRecord(Record):
    """Boxes per class on one image; ``candidates`` are the classes that may be asked (absent -> <N/A>)."""

    image: ImageSource | None = None
    width: int = 0
    height: int = 0
    boxes: dict[str, list[PixelBox]] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    kind: str = "anatomy"  # "anatomy" or "pathology"


@dataclass
class SegmentationRecord(Record):
    """Masks per structure on one image or volume."""

    image: ImageSource | None = None
    masks: dict[str, MaskSource] = field(default_factory=dict)


@dataclass
class VQARecord(Record):
    images: list[ImageSource] = field(default_factory=list)
    question: str = ""
    answer: str = ""


@dataclass
class RegionCaptionRecord(Record):
    image: ImageSource | None = None
    width: int = 0
    height: int = 0
    region: PixelBox = (0.0, 0.0, 0.0, 0.0)
    caption: str = ""


@dataclass
class ComparisonRecord(Record):
    """Longitudinal comparison: current and prior images, the difference text (and the question, if given)."""

    current: list[ImageSource] = field(default_factory=list)
    prior: list[ImageSource] = field(default_factory=list)
    answer: str = ""
    question: str = ""
