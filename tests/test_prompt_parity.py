"""What training sees and what the node sends are the same prompt.

A training record is written as the DICOM a modality would send (CR with Patient's Age and Sex,
View Position, the supine modifier of an AP supine film), read by the node's DICOM side and
planned as the worker plans it; the request must equal the training sample of that record:
the same clinical context text, the same images in the same order, the same template and so the
same token ids. Runs on fixtures of its own, and on medinterp-mini's training notes when
``../shared`` is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medversa.dicom_mapping import StudyOptions, plan_study, prepare_study
from medversa.dicom_mapping.header_context import clinical_context
from medversa.inference import (
    TEMPLATES,
    ClinicalContext,
    Declaration,
    Modality,
    Task,
    build_model,
    build_prompt_ids,
    context_fields_from,
    fill_template,
)
from medversa.training.records import ClassificationRecord, ImageFile, ReportRecord
from medversa.training.samples import build_sample

from . import dicom_factory as f

MEDINTERP = Path(__file__).resolve().parents[2] / "shared" / "data" / "medinterp-mini"
#: What the bundled demo checkpoint declares (and what its recipe trains with).
DEMO_FIELDS = context_fields_from({"cxr": ["age", "sex", "view"], "derm": [], "ct": []})
_SEX = {"male": "M", "female": "F", "other": "O"}
_VIEW = {"PA": "PA", "AP": "AP", "AP supine": "AP", "lateral": "LL"}


def record_as_dicom(record: ReportRecord | ClassificationRecord) -> Dataset:
    """The CR a modality would send for ``record``: its pixels, and its context as header attributes."""
    pixels = (record.images[0] if isinstance(record, ReportRecord) else record.image).load()
    ds = f.make_cr(*pixels.shape, body_part="CHEST")
    f.set_pixels(ds, pixels.astype(np.uint8), "MONOCHROME2", bits_stored=8)
    # Displayed as stored: the linear VOI window (PS3.3 C.11.2.1.2.1) with centre 128, width 256 is the
    # identity on 0..255, so the node sees the pixels training read from the PNG.
    ds.WindowCenter, ds.WindowWidth = 128, 256
    context = record.context or ClinicalContext()
    if context.age is not None:
        ds.PatientAge = f"{context.age:03d}Y"
    if context.sex:
        ds.PatientSex = _SEX[context.sex]
    if context.view:
        ds.ViewPosition = _VIEW[context.view]
    if context.view == "AP supine":
        modifier = Dataset()
        modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = "40199007", "SCT", "Supine"
        orientation = Dataset()
        orientation.CodeValue, orientation.CodingSchemeDesignator, orientation.CodeMeaning = "102538003", "SCT", \
            "recumbent"
        orientation.PatientOrientationModifierCodeSequence = Sequence([modifier])
        ds.PatientOrientationCodeSequence = Sequence([orientation])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-0042"
    if context.age is None:  # what the record does not know, the header does not say either
        for keyword in ("PatientAge", "PatientBirthDate"):
            if keyword in ds:
                delattr(ds, keyword)
    else:
        ds.PatientBirthDate = "19700101"  # Patient's Age wins; the birth date never reaches a prompt
    for keyword, known in (("PatientSex", context.sex), ("ViewPosition", context.view)):
        if not known and keyword in ds:
            delattr(ds, keyword)
    return ds


def _tokenizer():
    return build_model("tiny")[1]


def assert_same_prompt(record: ReportRecord | ClassificationRecord, task: Task, tokenizer) -> None:
    """The node's request for ``record`` as DICOM == the training sample of ``record``."""
    options = StudyOptions(tasks=(task,), context_fields=DEMO_FIELDS, declared_tasks=tuple(Task))
    inputs = prepare_study([record_as_dicom(record)])
    [planned], _ = plan_study(inputs, options)
    request = planned.request
    sample = build_sample(record, task, np.random.default_rng(0), augment=False, context_fields=DEMO_FIELDS)
    assert request.context == sample.context, (request.context, sample.context)
    assert len(request.images) == len(sample.images)
    for sent, seen in zip(request.images, sample.images, strict=False):
        np.testing.assert_array_equal(sent.pixels, seen)
    [(_, question)] = request.prompts()
    assert question == fill_template(TEMPLATES[task][0], [0])  # inference asks with template 0 ...
    trained = [fill_template(t, [0]) for t in TEMPLATES[task]]
    assert sample.question in trained  # ... one of the templates training draws from
    training_ids = build_prompt_ids(tokenizer, len(sample.images), question, sample.context, task.uses_context)
    node_ids = build_prompt_ids(tokenizer, len(request.images), question, request.context, task.uses_context)
    assert node_ids.ids == training_ids.ids


def _record(tmp_path: Path, context: ClinicalContext, task: Task = Task.REPORT_FINDINGS,
            seed: int = 0) -> ReportRecord | ClassificationRecord:
    path = tmp_path / f"cxr{seed}.png"
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(path)
    if task is Task.CHEST_PATHOLOGY_CLASSIFICATION:
        return ClassificationRecord("fixture/cxr-notes", f"r{seed}", Modality.CXR, "train", ImageFile(path),
                                    ["pneumonia"], context=context)
    return ReportRecord("fixture/cxr-notes", f"r{seed}", Modality.CXR, "train", [ImageFile(path)],
                        findings="Bilateral patchy opacities.", context=context)


@pytest.mark.parametrize("context", [
    ClinicalContext(age=46, sex="male", view="PA"),
    ClinicalContext(age=71, sex="female", view="AP supine"),
    ClinicalContext(sex="female", view="lateral"),
    ClinicalContext(age=5, view="AP"),
    ClinicalContext(),
])
@pytest.mark.parametrize("task", [Task.REPORT_FINDINGS, Task.CHEST_PATHOLOGY_CLASSIFICATION])
def test_a_training_record_sent_as_dicom_gets_its_training_prompt(tmp_path, context, task):
    record = _record(tmp_path, context, task)
    assert_same_prompt(record, task, _tokenizer())


def test_the_prompt_never_carries_names_ids_or_birth_dates(tmp_path):
    ds = record_as_dicom(_record(tmp_path, ClinicalContext(age=46, sex="male", view="PA")))
    ds.ReasonForTheRequestedProcedure = "Doe Jane MRN-0042 cough and fever since 19700101"
    inputs = prepare_study([ds])
    everything = Declaration().context_fields  # every field, the indication too
    [planned], _ = plan_study(inputs, StudyOptions(tasks=(Task.REPORT_FINDINGS,), context_fields=everything))
    context = planned.request.context
    assert "Indication: cough and fever since." in context, context
    for identifier in ("Doe", "Jane", "MRN-0042", "19700101", "1970"):
        assert identifier not in context


def test_the_context_fields_are_the_checkpoints(tmp_path):
    """A checkpoint trained without context gets none; one trained with all fields gets the indication."""
    ds = record_as_dicom(_record(tmp_path, ClinicalContext(age=46, sex="male", view="PA")))
    ds.RequestedProcedureDescription = "XR CHEST PA"
    ds.AdditionalPatientHistory = "Shortness of breath"
    inputs = prepare_study([ds])
    contexts = {}
    for name, fields in (("none", {Modality.CXR: ()}), ("demo", DEMO_FIELDS), ("all", None)):
        [planned], _ = plan_study(inputs, StudyOptions(tasks=(Task.REPORT_FINDINGS,), context_fields=fields))
        contexts[name] = planned.request.context
    assert contexts == {"none": "", "demo": "Age: 46. Sex: male. View: PA.",
                        "all": "Age: 46. Sex: male. View: PA. Indication: XR CHEST PA. Shortness of breath."}


def test_age_comes_from_birth_and_study_dates_when_patients_age_is_missing():
    ds = f.make_cr(8, 8, PatientBirthDate="19800615", StudyDate="20240614")
    assert clinical_context(ds).age == 43
    ds.StudyDate = "20240615"
    assert clinical_context(ds).age == 44
    ds.PatientAge = "018M"
    assert clinical_context(ds).age == 1


@pytest.mark.skipif(not MEDINTERP.is_dir(), reason="../shared/data/medinterp-mini is not here")
def test_medinterp_mini_training_notes_sent_as_dicom_get_their_training_prompts():
    from medversa.training.datasets.medinterp_mini import read_cxr_notes

    records = [r for r in read_cxr_notes(MEDINTERP, "train") if isinstance(r, ReportRecord)]
    by_view: dict[str | None, ReportRecord] = {}
    for record in records:  # one record per view, as the data has them (PA, AP, AP supine, lateral, none)
        by_view.setdefault(record.context.view if record.context else None, record)
    assert {"PA", "AP", "AP supine", "lateral"} <= set(by_view)
    tokenizer = _tokenizer()
    for record in by_view.values():
        assert_same_prompt(record, Task.REPORT_FINDINGS, tokenizer)
    demo = Declaration.from_meta({"context_fields": {"cxr": ["age", "sex", "view"], "derm": [], "ct": []}})
    assert demo.context_fields == DEMO_FIELDS


def test_the_bundled_checkpoint_declares_the_context_its_recipe_trains_with():
    from medversa.inference import BUNDLED_CHECKPOINT
    from medversa.inference.checkpoint import read_meta
    from medversa.training.train_config import TrainConfig, recipe_path

    declared = Declaration.from_meta(read_meta(BUNDLED_CHECKPOINT))
    assert declared.context_fields == DEMO_FIELDS
    recipe = TrainConfig.from_file(recipe_path("demo"))
    if recipe.context_fields is not None:
        assert context_fields_from(recipe.context_fields) == declared.context_fields
