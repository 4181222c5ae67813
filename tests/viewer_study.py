"""Studies the node processed, for the viewer tests: source images plus our result objects.

The results come from the real pipeline (:func:`medversa.node.pipeline.analyze_study`) on the
tiny model with planted answers (random tiny weights rarely emit the task tokens), so every kind
of result is present: report text, classification, detection boxes, 2D organ masks, 3D organ
masks. Sources are the tests' own fixtures and, when ``../shared`` exists, a copy of the shared
``RG1_J2KI.dcm`` chest radiograph without its zero Pixel Spacing (``0.000\\0.000``, which a
viewer cannot use; the node never copies it either).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset

from medversa.dicom_mapping import DEFAULT_TASKS, ObjectKind, SeriesKind, StudyOptions
from medversa.inference import Task, scripted_chooser
from medversa.node.infer import algorithm_for
from medversa.node.pipeline import analyze_study

from . import dicom_factory as f

SCRIPT = {
    Task.REPORT_FINDINGS: "The lungs are clear. There is a small left pleural effusion.###",
    Task.REPORT_IMPRESSION: "Small left pleural effusion.###",
    Task.CHEST_PATHOLOGY_CLASSIFICATION: "The main diagnosis is pleural effusion.###",
    Task.PATHOLOGY_DETECTION: "pleural effusion <DET>, pneumothorax <N/A>.###",
    Task.ANATOMY_DETECTION: "left lung <DET>, mediastinum <N/A>.###",
    Task.CHEST_ORGAN_SEGMENTATION: "The segmentation mask of {target} is <2DSEG>.###",
    Task.ABDOMINAL_ORGAN_SEGMENTATION: "The segmentation mask of {target} is <3DSEG>.###",
    Task.SKIN_LESION_CLASSIFICATION: "The main diagnosis is melanoma.###",
    Task.SKIN_LESION_SEGMENTATION: "The segmentation mask of {target} is <2DSEG>.###",
    Task.VQA: "Yes, there is a small effusion.###",
    Task.REGION_CAPTIONING: "Blunting of the costophrenic angle.###",
    Task.LONGITUDINAL_COMPARISON: "The effusion is new since the prior study.###",
}


@dataclass
class ProcessedStudy:
    """One study: its source instances and the node's result objects (kind, dataset)."""

    name: str
    sources: list[Dataset]
    results: list[tuple[ObjectKind, Dataset]]

    @property
    def study_uid(self) -> str:
        return str(self.sources[0].StudyInstanceUID)

    def of_kind(self, kind: ObjectKind) -> list[Dataset]:
        return [ds for k, ds in self.results if k == kind]

    def write(self, folder: Path, *, with_results: bool = True) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        items = [("SRC", ds) for ds in self.sources] + (self.results if with_results else [])
        for i, (kind, ds) in enumerate(items):
            path = folder / f"{self.name}_{i:03d}_{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def _process(name: str, sources: list[Dataset], analyzer, tasks: tuple[Task, ...] | None = None,
             prior: list[Dataset] | None = None, **options) -> ProcessedStudy:
    settings = StudyOptions(algorithm=algorithm_for(analyzer), tasks=tasks, **options)
    chooser = scripted_chooser(analyzer.tokenizer, {task.value: text for task, text in SCRIPT.items()})
    out = analyze_study(sources, analyzer, settings, prior_datasets=prior, choose_for=chooser)
    return ProcessedStudy(name, sources, [(o.kind, o.dataset) for o in out.objects])


def _chest_pixels(rows: int, cols: int) -> np.ndarray:
    """A radiograph-like image: dark lungs in a bright body, so outlines have room to show."""
    y, x = np.mgrid[0:rows, 0:cols]
    body = np.full((rows, cols), 2600.0)
    for cx in (0.32 * cols, 0.68 * cols):
        body -= 1500 * (((x - cx) / (0.16 * cols)) ** 2 + ((y - 0.5 * rows) / (0.32 * rows)) ** 2 < 1)
    return np.clip(body + np.random.default_rng(0).normal(0, 40, body.shape), 0, 4095).astype(np.uint16)


def chest_study(analyzer) -> ProcessedStudy:
    """A CR chest radiograph (0.2 mm pixels) with every 2D result kind (the default tasks and anatomy detection)."""
    source = f.make_cr(256, 256, pixels=_chest_pixels(256, 256), study_uid=hd.UID(), instance_number=1,
                       SeriesDescription="PA chest", StudyDescription="Chest PA")
    tasks = DEFAULT_TASKS[SeriesKind.CHEST_RADIOGRAPH] + (Task.ANATOMY_DETECTION,)
    return _process("chest", [source], analyzer, tasks=tasks)


def ct_study(analyzer) -> ProcessedStudy:
    """An abdominal CT series with the four organ SEG segments."""
    series = f.make_ct_series(12, 2.5, rows=96, cols=96, study_uid=hd.UID())
    return _process("ct", series, analyzer)


def shared_radiograph_study(analyzer, path: Path) -> ProcessedStudy:
    """The shared RG1_J2KI.dcm radiograph, its zero Pixel Spacing removed (a copy; the source is read-only)."""
    ds = pydicom.dcmread(path)
    spacing = ds.get("PixelSpacing")
    if spacing is not None and min(float(v) for v in spacing) <= 0:
        del ds.PixelSpacing
    ds.BodyPartExamined = ds.get("BodyPartExamined") or "CHEST"
    return _process("rg1", [ds], analyzer)


def zero_spacing_radiograph_study(analyzer, path: Path) -> ProcessedStudy:
    """RG1_J2KI.dcm as a modality sends it (Pixel Spacing 0.000\\0.000), in a study of its own."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = hd.UID(), hd.UID(), hd.UID()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return _process("rg1-zero-spacing", [ds], analyzer)


def sr_variant_studies(analyzer) -> list[ProcessedStudy]:
    """Studies whose SRs take the other paths of the SR builder: dermoscopy (skin classification and
    lesion mask), question and region answers only (no measurement group at all), and a
    longitudinal comparison with a prior study (Pertinent Other Evidence)."""
    derm = _process("derm", [f.make_vl_photo(64, 64, study_uid=hd.UID())], analyzer)
    asked = _process("asked", [f.make_cr(96, 96, study_uid=hd.UID())], analyzer, tasks=(),
                     ask="Is there an effusion?", region=(10, 10, 60, 70))
    prior = f.make_cr(96, 96, study_uid=hd.UID(), StudyDate="20230101")
    compared = _process("compared", [f.make_cr(96, 96, study_uid=hd.UID())], analyzer,
                        tasks=(Task.LONGITUDINAL_COMPARISON,), prior=[prior])
    return [derm, asked, compared]
