"""``medversa infer``: DICOM files in, SR / SEG / presentation states out, offline."""

from __future__ import annotations

import logging
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from medversa.dicom_mapping import AlgorithmInfo, StudyOptions, truncation
from medversa.inference import model_identity

from .pipeline import StudyOutput, analyze_study

LOGGER = logging.getLogger(__name__)

#: The installed distribution's version (pyproject.toml), read here rather than from the ``medversa``
#: root package: a room never imports the CLI root it is registered in.
SOFTWARE_VERSION = version("medversa-node")


def read_inputs(paths: list[Path]) -> tuple[dict[str, list[Dataset]], list[str]]:
    """DICOM files under ``paths`` grouped by study; problems as messages (never an exception)."""
    studies: dict[str, list[Dataset]] = defaultdict(list)
    problems: list[str] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    for file in files:
        try:
            ds = pydicom.dcmread(file)
            # pydicom reads a file cut short without complaint, and parses values only when used.
            problem = truncation(ds)
            uid = ds.get("StudyInstanceUID")
        except (InvalidDicomError, OSError, EOFError) as exc:
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever a broken file makes pydicom raise
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            problems.append(f"{file}: not a readable DICOM file ({problem})")
            continue
        if not uid or "SOPInstanceUID" not in ds:
            problems.append(f"{file}: no StudyInstanceUID/SOPInstanceUID")
            continue
        ds.filename = str(file)
        studies[str(uid)].append(ds)
    return dict(studies), problems


def algorithm_for(analyzer, org_root: str | None = None) -> AlgorithmInfo:
    """The algorithm identity of a loaded model (its device UID follows the weights)."""
    kwargs = {"org_root": org_root} if org_root else {}
    return AlgorithmInfo(version=SOFTWARE_VERSION, model_id=model_identity(analyzer),
                         software_version=f"medversa-node {SOFTWARE_VERSION}",
                         model_name=f"MedVersa {analyzer.model.config.name}", **kwargs)


def write_outputs(output: StudyOutput, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for obj in output.objects:
        path = out_dir / f"{obj.kind}_{obj.dataset.SOPInstanceUID}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def run_infer(paths: list[Path], out_dir: Path, analyzer, options: StudyOptions,
              prior_paths: list[Path] | None = None,
              choose_for=None) -> tuple[list[tuple[str, Path, Dataset]], list[str], int]:
    """Process every study found; return (kind, path, dataset) per object written, the messages and
    the number of studies with results (a study with none may still get a not-analysed SR)."""
    studies, messages = read_inputs(paths)
    priors, prior_problems = read_inputs(prior_paths or [])
    messages += prior_problems
    prior_datasets = [ds for group in priors.values() for ds in group] or None
    written: list[tuple[str, Path, Dataset]] = []
    analysed = 0
    for study_uid, datasets in studies.items():
        try:
            output = analyze_study(datasets, analyzer, options, prior_datasets, choose_for=choose_for)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            LOGGER.debug("study %s failed", study_uid, exc_info=True)
            messages.append(f"study {study_uid}: not processed: {type(exc).__name__}: {exc}")
            continue
        messages += [f"study {study_uid}: {n}" for n in output.notes]
        analysed += bool(output.results)
        if not output.results and output.objects:
            messages.append(f"study {study_uid}: nothing analysed; its SR names the images left out and why")
        for obj, path in zip(output.objects, write_outputs(output, out_dir), strict=True):
            written.append((obj.kind, path, obj.dataset))
    if not studies:
        messages.append("no DICOM study found in the inputs")
    return written, messages, analysed
