"""CheXpert test set (500 studies, 668 images; radiologist majority vote): chest pathology classification.

Layout, either release (Stanford AIMI "CheXpert" test labels as shipped with
CheXlocalize; or rajpurkarlab/cheXpert-test-set-labels)::

    <root>/test_labels.csv   Path,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,...,Support Devices (0/1)
                             Path: test/patient64741/study1/view1_frontal.jpg
    <root>/groundtruth.csv   Study,Atelectasis,Cardiomegaly,... (0/1), one row per study
                             Study: test/patient64741/study1 (all its .jpg files are the study's images)
    <root>/test/patient64741/study1/view1_frontal.jpg

A leading ``CheXpert-v1.0/`` in a path is ignored. The 14 observations are
mapped onto our phrases (:data:`~medversa.training.vocabulary.CHEXPERT_OBSERVATIONS`);
the 9 that have one become the record's ``candidates``, so a study whose only
positives are, say, support devices reads as none of the nine, not as normal.
The paper uses this set for external validation only (split "test").
"""

from __future__ import annotations

from pathlib import Path

from medversa.inference import Modality

from ..records import ClassificationRecord, ImageFile, RecordError
from ..vocabulary import CHEST_PATHOLOGIES, CHEXPERT_OBSERVATIONS
from .common import Row, check_split, find_file, read_table, table_columns

SOURCE = "chexpert"
CANDIDATES = tuple(p for p in CHEST_PATHOLOGIES if p in CHEXPERT_OBSERVATIONS.values())


def _labels(row: Row, table: Path, line: int) -> list[str]:
    present = set()
    for column, phrase in CHEXPERT_OBSERVATIONS.items():
        value = row[column].strip()
        if value not in ("0", "1", "0.0", "1.0"):
            raise RecordError(table, line, f"{column} is {value!r}, not 0 or 1")
        if phrase is not None and float(value) == 1.0:
            present.add(phrase)
    return [p for p in CANDIDATES if p in present]


def _resolve(root: Path, relative: str) -> Path:
    path = root / relative
    parts = Path(relative).parts
    if not path.exists() and parts and parts[0].startswith("CheXpert-v1.0"):
        path = root.joinpath(*parts[1:])
    return path


def read_chexpert_test(root: Path, split: str | None = None) -> list[ClassificationRecord]:
    """One record per test image with its (study's) labels among the 9 mapped observations."""
    check_split(split, ("test",), "CheXpert test set")
    root = Path(root)
    table = find_file(root, ["test_labels.csv", "groundtruth.csv"], "CheXpert test labels")
    per_image = "Path" in table_columns(table)
    id_column = "Path" if per_image else "Study"
    records = []
    for line, row in read_table(table, (id_column, *CHEXPERT_OBSERVATIONS)):
        labels = _labels(row, table, line)
        path = _resolve(root, row[id_column].strip())
        if per_image:
            if not path.is_file():
                raise RecordError(table, line, f"refers to {path}, which does not exist")
            images = [path]
        else:
            images = sorted(path.glob("*.jpg")) if path.is_dir() else []
            if not images:
                raise RecordError(table, line, f"study folder {path} has no .jpg images")
        for image in images:
            record_id = image.relative_to(root).as_posix()
            records.append(ClassificationRecord(SOURCE, record_id, Modality.CXR, "test", ImageFile(image), labels,
                                                candidates=CANDIDATES))
    return records
