"""Medical-Diff-VQA 1.0.0: open-ended VQA on one study, and longitudinal comparison of two.

Layout (PhysioNet ``medical-diff-vqa`` 1.0.0; Holipori/MIMIC-Diff-VQA)::

    <root>/mimic_pair_questions.csv   [index,]study_id,subject_id,ref_id,question_type,question,answer,split
    <root>/mimic_all.csv              [index,]subject_id,study_id,...,dicom_id,view,split,study_date,study_order

``question_type`` is abnormality, location, level, view, type, presence or
difference; ``split`` is train/val/test. A "difference" question compares the
main study (``study_id``) with the reference study (``ref_id``) and becomes a
:class:`ComparisonRecord`; the others ask about the main study and become
:class:`VQARecord` (paper, Methods: Medical-Diff-VQA). ``mimic_all.csv``
names the frontal image used for each study; the images are MIMIC-CXR-JPG's,
under ``mimic_root`` (``files/p../p<subject>/s<study>/<dicom_id>.jpg``).
The record id is the question's row index (0-based, as the published splits
and captions files index it).
"""

from __future__ import annotations

from pathlib import Path

from medversa.inference import Modality

from ..records import ComparisonRecord, ImageFile, Record, RecordError, VQARecord
from . import mimic_jpg
from .common import check_split, clean, find_file, read_table

SOURCE = "medical-diff-vqa"
SPLITS = ("train", "val", "test")
QUESTION_TYPES = ("abnormality", "location", "level", "view", "type", "presence", "difference")


def read_study_images(path: Path) -> dict[str, tuple[str, str]]:
    """``study_id -> (subject_id, dicom_id)`` from ``mimic_all.csv``."""
    studies = {}
    for line, row in read_table(path, ("subject_id", "study_id", "dicom_id")):
        subject, study, dicom = (row[k].strip() for k in ("subject_id", "study_id", "dicom_id"))
        if not subject.isdigit() or not study.isdigit() or not dicom:
            raise RecordError(path, line, f"malformed ids: subject_id={subject!r}, study_id={study!r}, "
                                          f"dicom_id={dicom!r}")
        studies[study] = (subject, dicom)
    return studies


def read_medical_diff_vqa(root: Path, split: str | None = None, mimic_root: Path | None = None) -> list[Record]:
    """VQA and comparison records of ``split`` ("train", "val", "test"; None: all).

    ``mimic_root``: the MIMIC-CXR-JPG folder holding ``files/`` (default: ``root``).
    """
    check_split(split, SPLITS, "Medical-Diff-VQA")
    root = Path(root)
    mimic_root = Path(mimic_root) if mimic_root is not None else root
    questions = find_file(root, ["mimic_pair_questions.csv"], "Medical-Diff-VQA questions")
    all_path = find_file(root, ["mimic_all.csv"], "Medical-Diff-VQA study table")
    studies = read_study_images(all_path)

    def image(study: str, line: int, column: str) -> ImageFile:
        if study not in studies:
            raise RecordError(questions, line, f"{column} {study!r} is not in {all_path.name}")
        subject, dicom = studies[study]
        path = mimic_jpg.image_path(mimic_root, subject, study, dicom)
        if not path.is_file():
            raise RecordError(questions, line, f"the image of {column} {study} ({path}) does not exist")
        return ImageFile(path)

    records: list[Record] = []
    required = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")
    for index, (line, row) in enumerate(read_table(questions, required)):
        if row["split"] not in SPLITS:
            raise RecordError(questions, line, f"unknown split {row['split']!r}; expected one of {SPLITS}")
        if split is not None and row["split"] != split:
            continue
        kind = row["question_type"].strip()
        if kind not in QUESTION_TYPES:
            raise RecordError(questions, line, f"unknown question_type {kind!r}; expected one of {QUESTION_TYPES}")
        question, answer = clean(row["question"]), clean(row["answer"])
        if not question or not answer:
            raise RecordError(questions, line, "empty question or answer")
        record_id = row.get("", "").strip() or str(index)  # the pandas index column, when written
        main = image(row["study_id"].strip(), line, "study_id")
        if kind == "difference":
            prior = image(row["ref_id"].strip(), line, "ref_id")
            records.append(ComparisonRecord(SOURCE, record_id, Modality.CXR, row["split"], [main], [prior],
                                            answer=answer, question=question))
        else:
            records.append(VQARecord(SOURCE, record_id, Modality.CXR, row["split"], [main], question, answer))
    return records
