"""A report or classification request holds no more chest views than the checkpoint saw in one request.

The paper's model reads all views of a study in one report request; the bundled demo model was trained
on single films (every medinterp-mini radiograph is its own record). Sent a study's two films in one
findings request, it answered with a class name instead of a report: 18 of 40 train-split radiographs
(the same film twice) answered "pneumonia", against 0 of 40 with one film. The checkpoint declares
``views_per_request`` and the planner sends no more (frontal first)."""

from __future__ import annotations

import numpy as np
import pytest

from medversa.dicom_mapping import StudyOptions, plan_study, prepare_study
from medversa.dicom_mapping.references import View
from medversa.inference import Declaration, Modality, Task
from medversa.training.records import ArrayImage, ClassificationRecord, ReportRecord, TextRecord
from medversa.training.sampler import Pool
from medversa.training.trainer import views_per_request

from . import dicom_factory as fac
from .conftest import SHARED, need

MINI = SHARED / "data" / "medinterp-mini"
LANGUAGE = (Task.REPORT_FINDINGS, Task.CHEST_PATHOLOGY_CLASSIFICATION)


def _pa_and_lateral(pixels: np.ndarray | None = None, **attrs: object) -> list:
    size = {} if pixels is None else {"rows": pixels.shape[0], "cols": pixels.shape[1], "pixels": pixels}
    lateral = fac.make_cr(view_position="LL", instance_number=1, **size, **attrs)
    pa = fac.make_cr(view_position="PA", instance_number=2, study_uid=lateral.StudyInstanceUID,
                     sop_uid=fac.generate_uid(), **size, **attrs)
    return [lateral, pa]  # sent lateral first: the planner puts the frontal film first


def test_the_declaration_carries_views_per_request_and_checks_it():
    declared = Declaration(views_per_request=2)
    assert Declaration.from_meta(declared.to_meta()) == declared
    assert Declaration.from_meta({}).views_per_request is None  # a checkpoint that does not say
    assert "views_per_request" not in Declaration().to_meta()
    for wrong in (0, -1, True, "2", 1.5):
        with pytest.raises(ValueError, match="views_per_request"):
            Declaration(views_per_request=wrong)  # type: ignore[arg-type]


def test_training_declares_the_most_views_one_report_or_classification_sample_showed():
    def report(n: int) -> ReportRecord:
        return ReportRecord("t", f"r{n}", Modality.CXR, "train", images=[ArrayImage(np.zeros((4, 4)))] * n)

    single = ClassificationRecord("t", "c", Modality.CXR, "train", image=ArrayImage(np.zeros((4, 4))))
    text_only = TextRecord("t", "x", Modality.CXR, "train", findings="clear lungs")
    assert views_per_request([Pool(Modality.CXR, Task.REPORT_FINDINGS, (report(1), report(3), report(2)))]) == 3
    assert views_per_request([Pool(Modality.CXR, Task.REPORT_FINDINGS, (text_only, report(1))),
                              Pool(Modality.CXR, Task.CHEST_PATHOLOGY_CLASSIFICATION, (single,))]) == 1
    assert views_per_request([Pool(Modality.CXR, Task.CHEST_ORGAN_SEGMENTATION, (report(2),))]) is None


def test_the_planner_sends_the_declared_number_of_views_frontal_first_and_says_so():
    inputs = prepare_study(_pa_and_lateral())
    pa = next(i for i in inputs.images if i.view is View.FRONTAL)
    planned, notes = plan_study(inputs, StudyOptions(tasks=LANGUAGE))
    assert [len(p.images) for p in planned] == [2, 2] and not any("chest views" in n for n in notes)
    planned, notes = plan_study(inputs, StudyOptions(tasks=LANGUAGE, views_per_request=1))
    assert [[i.ref.sop_instance_uid for i in p.images] for p in planned] == [[pa.ref.sop_instance_uid]] * 2
    assert [len(p.request.images) for p in planned] == [1, 1]
    assert "reports and classes read 1 of the study's 2 chest views (frontal first): the model was trained on " \
           "1 per request" in notes
    planned, notes = plan_study(inputs, StudyOptions(tasks=(Task.CHEST_ORGAN_SEGMENTATION,), views_per_request=1))
    assert len(planned) == 1 and not any("chest views" in n for n in notes)  # one film per request anyway


def test_the_bundled_model_declares_the_single_films_it_was_trained_on_and_reports_a_two_film_study():
    from medversa.inference import load_analyzer
    from medversa.training.datasets.medinterp_mini import read_cxr_notes
    from medversa.training.evaluate import confused

    records = [r for r in read_cxr_notes(need(MINI), "train") if isinstance(r, ReportRecord)]
    assert views_per_request([Pool(Modality.CXR, Task.REPORT_FINDINGS, tuple(records))]) == 1
    analyzer = load_analyzer(device="cpu")
    assert analyzer.declaration.views_per_request == 1
    # A train-split radiograph sent as a PA + lateral study (the same film as both: a stand-in).
    record = next(r for r in records if r.images and r.context is not None and r.context.age)
    film = record.images[0].load()
    study = prepare_study(_pa_and_lateral(film.astype(np.uint16) * 16, PatientAge=f"{int(record.context.age):03d}Y",
                                          PatientSex=(record.context.sex or "O")[0].upper()))
    for views, report_expected in ((1, True), (None, False)):
        planned, _ = plan_study(study, StudyOptions(tasks=(Task.REPORT_FINDINGS,), views_per_request=views,
                                                    context_fields=analyzer.declaration.context_fields))
        (request,) = [p.request for p in planned]
        (answer,) = analyzer.run([request])
        assert confused(Task.REPORT_FINDINGS, Modality.CXR, [request], [answer]) is not report_expected, \
            (views, answer.text[:80])


def test_the_worker_and_medversa_infer_plan_with_the_checkpoints_views(tmp_path):
    import subprocess
    import sys

    from medversa.node.jobs import pipeline_options
    from medversa.node.node_context import NodeContext
    from medversa.node.settings import load_settings

    node = NodeContext(load_settings(None, data_dir=tmp_path / "data", idle_seconds=5))  # the bundled model
    options = pipeline_options(node, LANGUAGE, (), "1.2.3")
    assert options.views_per_request == node.analyzer.declaration.views_per_request == 1
    fac.write_datasets(_pa_and_lateral(), tmp_path / "in")
    done = subprocess.run([sys.executable, "-m", "medversa.cli", "infer", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "--task", "chest_pathology_classification"],
                          capture_output=True, text=True, timeout=600)
    assert "reports and classes read 1 of the study's 2 chest views" in done.stderr, done.stderr[-2000:]


def test_model_info_states_the_views_per_request():
    import json
    import subprocess
    import sys

    def info(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "medversa.cli", "model", "info", *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "chest views per report/classification request: 1" in info()  # the bundled model
    assert "chest views per report/classification request: up to 4" in info("tiny")  # a preset says nothing
    assert json.loads(info("--json"))["declaration"]["views_per_request"] == 1
