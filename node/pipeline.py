"""One study through the model: prepare -> plan -> run -> build, the result objects handed back for export.

The worker and ``medversa infer`` share this function. The DICOM side is dicom_mapping's: it
prepares the model inputs, plans which tasks run on which images (:mod:`medversa.dicom_mapping.plan`)
and builds the result objects with UIDs derived from the job key, so re-running the same job yields
the same objects (:mod:`medversa.dicom_mapping.study_objects`). The :class:`Analyzer` runs all the
study's requests at once (batched by task and modality).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydicom import Dataset

from medversa.dicom_mapping import (
    StudyInputs,
    StudyOptions,
    TaskResult,
    WrittenObject,
    build_study_objects,
    plan_study,
    prepare_study,
)
from medversa.inference import Analyzer, ChooserFactory

LOGGER = logging.getLogger(__name__)


@dataclass
class StudyOutput:
    """What one study's analysis hands to export: its result objects, the answers and the notes."""

    study_instance_uid: str
    objects: list[WrittenObject]
    results: list[TaskResult]
    inputs: StudyInputs
    notes: list[str] = field(default_factory=list)


def analyze_study(
    datasets: list[Dataset],
    analyzer: Analyzer,
    options: StudyOptions,
    prior_datasets: list[Dataset] | None = None,
    choose_for: ChooserFactory | None = None,
) -> StudyOutput:
    """Run the fitting tasks on one study and build its result objects."""
    inputs = prepare_study(datasets)
    prior = prepare_study(prior_datasets) if prior_datasets else None
    planned, notes = plan_study(inputs, options, prior)
    for note in notes:
        LOGGER.info("study %s: %s", inputs.study_instance_uid, note)
    # Nothing planned: no model run, though the objects may still say which films were left out.
    answers = analyzer.run([p.request for p in planned], choose_for=choose_for) if planned else []
    built = build_study_objects(datasets, inputs, planned, answers, options, prior_datasets)
    return StudyOutput(inputs.study_instance_uid, built.objects, built.results, inputs, notes)
