"""Shared fixture writers, the vocabulary, the registry and the table/section helpers of the readers.

The per-source reader tests (``test_training_datasets_*.py``) write tiny
fixtures in each dataset's published format with the helpers here.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medversa.training.datasets.common import hashed_split, read_table, scale_box
from medversa.training.datasets.mimic_cxr import report_sections
from medversa.training.datasets.registry import DATASETS, read_dataset
from medversa.training.records import RecordError
from medversa.training.vocabulary import (
    CHEST_PATHOLOGIES,
    CHEXPERT_OBSERVATIONS,
    IMAGENOME_FINDINGS,
    MS_CXR_CATEGORIES,
    NIH_FINDINGS,
    mass_or_nodule,
)


# --- fixture writers (used by the per-source test files) ------------------------------------------
def write_image(path: Path, size: tuple[int, int] = (8, 6), value: int = 100) -> Path:
    """A small grey image (JPEG or PNG by suffix) of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    """A CSV as pandas/Excel write it (``.gz`` suffix: gzip-compressed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# --- vocabulary ---------------------------------------------------------------------------------------
def test_every_source_label_maps_to_a_known_phrase():
    targets = [*IMAGENOME_FINDINGS.values(), *NIH_FINDINGS.values(), *MS_CXR_CATEGORIES.values(),
               *(p for p in CHEXPERT_OBSERVATIONS.values() if p)]
    assert set(targets) <= set(CHEST_PATHOLOGIES)
    assert IMAGENOME_FINDINGS["pulmonary edema/hazy opacity"] == "pulmonary edema"


def test_imagenome_mass_or_nodule_follows_the_sentence():
    assert mass_or_nodule("A 2 cm mass in the right upper lobe.") == "mass"
    assert mass_or_nodule("Multiple pulmonary masses.") == "mass"
    assert mass_or_nodule("Small nodular opacity, likely a nodule.") == "nodule"


# --- registry -------------------------------------------------------------------------------------
def test_registry_rejects_unknown_names_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mimic'.*mimic-cxr"):
        read_dataset("mimic", tmp_path, "train")
    with pytest.raises(ValueError, match="takes no option.*bogus"):
        read_dataset("mimic-cxr", tmp_path, "train", bogus=1)


def test_registry_readers_take_root_then_split():
    import inspect

    for name, reader in DATASETS.items():
        assert list(inspect.signature(reader).parameters)[:2] == ["root", "split"], name


def test_registry_passes_split_and_options_through(tmp_path):
    write_image(tmp_path / "images" / "00000001_000.png", (512, 512))
    write_csv(tmp_path / "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"],
              [["00000001_000.png", "Nodule", 100, 100, 50, 50]])
    assert read_dataset("nih-chestxray", tmp_path, "test") == []
    [record] = read_dataset("nih-chestxray", tmp_path, "test", findings=("Nodule",))
    assert record.boxes == {"nodule": [(50.0, 50.0, 75.0, 75.0)]}
    with pytest.raises(ValueError, match="splits"):
        read_dataset("nih-chestxray", tmp_path, "train")


# --- table helpers --------------------------------------------------------------------------------
def test_read_table_reads_gzip_and_names_missing_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv.gz", ["a", "b"], [[1, 2], [3, 4]])
    assert list(read_table(path, ("a",))) == [(2, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})]
    with pytest.raises(RecordError, match=r"t\.csv\.gz.*missing column\(s\) \['c'\]"):
        list(read_table(path, ("c",)))
    with pytest.raises(RecordError, match="file not found"):
        list(read_table(tmp_path / "absent.csv", ()))


def test_read_table_sniffs_tabs_and_names_short_rows(tmp_path):
    path = tmp_path / "HAM10000_metadata"
    path.write_text("lesion_id\timage_id\tdx\nHAM_1\tISIC_1\tnv\nHAM_2\n")
    rows = read_table(path, ("dx",))
    assert next(rows) == (2, {"lesion_id": "HAM_1", "image_id": "ISIC_1", "dx": "nv"})
    with pytest.raises(RecordError) as caught:
        next(rows)
    assert caught.value.path == path and caught.value.record == 3


def test_hashed_split_is_stable_and_about_one_in_ten():
    keys = [f"case{i}" for i in range(2000)]
    splits = [hashed_split(k) for k in keys]
    assert splits == [hashed_split(k) for k in keys]
    assert 0.07 < splits.count("test") / len(keys) < 0.13


def test_scale_box():
    assert scale_box((10, 20, 30, 40), (100, 200), (50, 50)) == (5.0, 5.0, 15.0, 10.0)


# --- MIMIC-CXR report sections ------------------------------------------------------------------------
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.
 Note: the cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_report_sections_follow_the_headers():
    sections = report_sections(REPORT)
    assert sections["findings"] == ("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
                                    "nodular opacities that most likely represent nipple shadows. Note: the "
                                    "cardiomediastinal silhouette is normal.")
    assert sections["impression"] == "No acute cardiopulmonary process."
    assert sections["indication"] == "___F with new onset ascites // eval for infection"
    assert sections["comparison"] == "None."


def test_report_sections_case_last_occurrence_and_combined_header():
    text = "Findings: first.\nFINDINGS: Lungs are clear.\nRECOMMENDATION(S): CT.\n"
    assert report_sections(text)["findings"] == "Lungs are clear."
    combined = report_sections("FINDINGS AND IMPRESSION:  Stable\n  cardiomegaly.")
    assert combined == {"findings": "", "impression": "Stable cardiomegaly.", "indication": "", "comparison": ""}
    assert report_sections("No headers at all.")["findings"] == ""
