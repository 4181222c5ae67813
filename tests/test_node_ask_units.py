"""Reader annotations and ask jobs in this process: reading OHIF / dcmjs SR and GSPS, telling the node's own
results apart, the boxes the model is asked about, the answer SR (dciodvfy, PixelMed), and the job store rules
(an annotation never reopens its study; ask jobs and the study's jobs never supersede each other)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from sqlalchemy import select

from medversa.dicom_mapping import (
    AlgorithmInfo,
    Region,
    RegionAnswer,
    bounding_box,
    build_answer_sr,
    in_pixels,
    own_result_reason,
    prepare_study,
    read_annotation,
    read_answers,
)
from medversa.dicom_mapping.annotations import is_question
from medversa.inference import Task
from medversa.node.ask import ask_key, queue_annotations
from medversa.node.job_store import Instance, Job, JobState, Study, StudyState
from medversa.node.jobs import create_job_version, run_job
from medversa.node.node_context import NodeContext
from medversa.node.scp import record_instance
from medversa.node.settings import load_settings

from . import dicom_factory as f
from .ask_fixtures import arrow_group, gsps_with_text, ohif_measurement_report, rectangle_group
from .dicom_tools import dciodvfy_errors, pixelmed_sr_report


@pytest.fixture
def image():
    return f.make_cr(64, 80, body_part="CHEST")


# -- reading ------------------------------------------------------------------------------------


def test_an_ohif_report_gives_its_rectangle_and_arrow_with_their_labels(image):
    report = ohif_measurement_report(image, [rectangle_group(image, (10, 12, 30, 40), "Is there a pneumothorax?"),
                                             arrow_group(image, (40, 20), (50, 30), "?")])
    annotation, why = read_annotation(report)
    assert annotation is not None, why
    rect, arrow = annotation.regions
    assert (rect.graphic_type, rect.label, rect.question) == ("POLYLINE", "Is there a pneumothorax?",
                                                               "Is there a pneumothorax?")
    assert rect.points.tolist() == [[10, 12], [30, 12], [30, 40], [10, 40], [10, 12]]
    assert (arrow.graphic_type, arrow.points.tolist(), arrow.label, arrow.question) == ("POINT", [[40, 20]], "?", "")
    for region in (rect, arrow):
        assert region.image.sop_instance_uid == image.SOPInstanceUID
        assert region.image.series_instance_uid == image.SeriesInstanceUID
        assert region.tracking.startswith("Cornerstone3DTools@^0.1.0:")


@pytest.mark.filterwarnings("ignore:The value length")  # cornerstone's code value is longer than SH allows
def test_the_legacy_cornerstone_free_text_finding_is_the_label_too(image):
    report = ohif_measurement_report(image, [arrow_group(image, (4, 5), (9, 9), "effusion?", legacy=True)])
    annotation, _ = read_annotation(report)
    assert annotation is not None and annotation.regions[0].label == "effusion?"
    assert annotation.regions[0].question == "effusion?"


def test_groups_without_image_coordinates_are_not_regions(image):
    report = ohif_measurement_report(image, [rectangle_group(image, (1, 1, 9, 9), "x")])
    scoord = report.ContentSequence[4].ContentSequence[0].ContentSequence[2].ContentSequence[0]
    scoord.ValueType = "SCOORD3D"
    annotation, why = read_annotation(report)
    assert annotation is None and "SCOORD3D" in why
    annotation, why = read_annotation(image)
    assert annotation is None and "carries no reader annotations" in why


def test_a_gsps_text_labels_the_graphic_it_is_anchored_beside(image):
    gsps = gsps_with_text(image, (5, 6, 20, 25), "Is this a nodule?")
    annotation, why = read_annotation(gsps)
    assert annotation is not None, why
    [region] = annotation.regions
    assert (region.graphic_type, region.label, region.tracking) == ("POLYLINE", "Is this a nodule?", "READER")
    assert region.image.series_instance_uid == image.SeriesInstanceUID


def test_gsps_display_units_are_fractions_of_the_image(image):
    gsps = gsps_with_text(image, (0.25, 0.5, 0.5, 0.75), "what is this")
    obj = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    obj.GraphicAnnotationUnits = "DISPLAY"
    del gsps.DisplayedAreaSelectionSequence
    annotation, _ = read_annotation(gsps)
    region = annotation.regions[0]
    assert region.units == "DISPLAY"
    assert in_pixels(region, 64, 80).points[0].tolist() == [20.0, 32.0]


@pytest.mark.parametrize(("label", "question"), [
    ("Is there a pneumothorax?", True), ("effusion?", True), ("describe the heart size", True),
    ("?", False), ("what is this", False), ("What is this?", False), ("nodule", False), ("", False)])
def test_a_label_is_a_question_when_it_asks_one(label, question):
    assert is_question(label) is question


def test_the_nodes_own_results_are_told_apart(image):
    algorithm = AlgorithmInfo()
    report = ohif_measurement_report(image, [rectangle_group(image, (1, 1, 9, 9), "x")])
    assert own_result_reason(report, algorithm.manufacturer) == ""
    report.Manufacturer = "medversa-node"
    assert own_result_reason(report, algorithm.manufacturer) == "Manufacturer is medversa-node"
    report.Manufacturer = "someone"
    report.ContributingEquipmentSequence = [algorithm.contributing_equipment()]
    assert "Contributing Equipment" in own_result_reason(report, algorithm.manufacturer)
    del report.ContributingEquipmentSequence
    report.SeriesDescription = "MedVersa answers (AI-generated, unverified)"
    assert "series description" in own_result_reason(report, algorithm.manufacturer)


# -- boxes --------------------------------------------------------------------------------------


def _region(kind: str, points: list) -> Region:
    from medversa.dicom_mapping import ImageReference

    return Region(kind, np.asarray(points, dtype=float), ImageReference("1.2", "1.2.3"), origin="test")


@pytest.mark.parametrize(("kind", "points", "box"), [
    ("POLYLINE", [[10, 12], [30, 12], [30, 40], [10, 40], [10, 12]], (10, 12, 30, 40)),
    ("CIRCLE", [[40, 30], [45, 30]], (35, 25, 45, 35)),
    ("ELLIPSE", [[30, 30], [50, 30], [40, 25], [40, 35]], (30, 25, 50, 35)),
    ("POINT", [[40, 32]], (33.6, 25.6, 46.4, 38.4)),            # 20 % of the shorter side (64)
    ("POLYLINE", [[-10, -10], [5, -10], [5, 5], [-10, 5]], (0, 0, 5, 5)),  # clipped to the image
    ("POLYLINE", [[20, 20], [20, 40]], (19, 20, 21, 40)),       # a line: 2 pixels wide
])
def test_the_box_the_model_is_asked_about(kind, points, box):
    assert bounding_box(_region(kind, points), 64, 80) == pytest.approx(box)


def test_a_region_outside_its_image_is_refused():
    with pytest.raises(ValueError, match="lies outside the 80x64 image"):
        bounding_box(_region("POLYLINE", [[100, 100], [120, 120]]), 64, 80)


# -- the answer SR ------------------------------------------------------------------------------


def test_the_answer_sr_is_valid_and_holds_question_answer_and_reference(image, tmp_path):
    report = ohif_measurement_report(image, [rectangle_group(image, (10, 12, 30, 40), "Is there a pneumothorax?"),
                                             arrow_group(image, (40, 20), (50, 30), "?")])
    rect, arrow = read_annotation(report)[0].regions
    undeclared = "not answered: the model does not declare region_captioning"
    sr = build_answer_sr([RegionAnswer(rect, "A region.", rect.question, "No."), RegionAnswer(arrow, note=undeclared)],
                         report, [image], AlgorithmInfo(), "1.2.826.0.1.3680043.10.1462.1",
                         "1.2.826.0.1.3680043.10.1462.2")
    path = tmp_path / "answer.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    errors, _ = pixelmed_sr_report(path)
    assert errors == []
    first, second = read_answers(pydicom.dcmread(path))
    assert (first["comment"], first["question"], first["answer"], first["caption"]) == (
        "No.", "Is there a pneumothorax?", "No.", "A region.")
    assert second["comment"] == "not answered: the model does not declare region_captioning"
    assert {first["annotation"], second["annotation"]} == {str(report.SOPInstanceUID)}
    with pytest.raises(ValueError, match="no region to answer"):
        build_answer_sr([], report, [image], AlgorithmInfo(), "1.2.3", "1.2.4")


def test_an_ask_has_its_own_key():
    main = "1.2.3:model"
    one = ask_key("1.2.3", {"source": "annotation", "annotation_uid": "1.2.3.4"}, "model")
    other = ask_key("1.2.3", {"source": "annotation", "annotation_uid": "1.2.3.5"}, "model")
    command = ask_key("1.2.3", {"source": "command", "question": "Q?", "region": None}, "model")
    assert len({main, one, other, command}) == 4


# -- the job store ------------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path):
    script = tmp_path / "scripted.yaml"
    script.write_text(yaml.safe_dump({"region_captioning": "A small opacity.", "vqa": "No."}))
    return NodeContext(load_settings(None, data_dir=tmp_path / "node", **{
        "model.preset": "tiny", "model.scripted_answers": str(script)}))


def _spool(ctx, ds) -> None:
    path = ctx.spool.path_for(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    record_instance(ctx.store, ds, str(path), path.stat().st_size, "PACS")


def test_an_annotation_never_reopens_its_study_and_becomes_an_ask_job(ctx, image):
    _spool(ctx, image)
    with ctx.store.session() as s:
        study = s.scalars(select(Study)).one()
        study.state, study.pending_instances = StudyState.DONE, 0
    report = ohif_measurement_report(image, [rectangle_group(image, (10, 12, 30, 40), "Is there a pneumothorax?")])
    _spool(ctx, report)
    with ctx.store.session() as s:
        study = s.scalars(select(Study)).one()
        assert (study.state, study.pending_instances) == (StudyState.DONE, 0)
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == str(report.SOPInstanceUID))).one()
        assert row.annotation == "new"
    [job_id] = queue_annotations(ctx)
    assert queue_annotations(ctx) == []  # looked at once
    main = create_job_version(ctx, 1, ["report_impression"], [])
    with ctx.store.session() as s:
        assert s.get(Job, job_id).state is JobState.RECEIVED  # the study's new version did not supersede it
    assert run_job(ctx, job_id) == "DONE"
    with ctx.store.session() as s:
        assert s.get(Job, main).state is JobState.RECEIVED
        assert s.scalars(select(Study)).one().state is StudyState.QUEUED  # the ask did not finish the study
        job = s.get(Job, job_id)
        assert job.ask["annotation_uid"] == str(report.SOPInstanceUID) and job.tasks == ["region_captioning", "vqa"]
    [sr_path] = list((ctx.settings.results_dir / str(image.StudyInstanceUID)).glob("SR_*.dcm"))
    [group] = read_answers(pydicom.dcmread(sr_path))
    assert (group["question"], group["answer"], group["caption"]) == ("Is there a pneumothorax?", "No.",
                                                                       "A small opacity.")


def test_a_region_on_a_film_stored_mirrored_reaches_the_model_on_the_same_anatomy(ctx):
    """The reader draws on the film as stored (mirrored, Patient Orientation R\\F); the model reads it
    hung, so the pixels it is given are flipped back and the region with them."""
    hung = (np.arange(64 * 80).reshape(64, 80) % 4096).astype(np.uint16)
    mirrored = f.make_cr(64, 80, pixels=np.ascontiguousarray(hung[:, ::-1]), PatientOrientation=["R", "F"])
    _spool(ctx, mirrored)
    with ctx.store.session() as s:
        study = s.scalars(select(Study)).one()
        study.state, study.pending_instances = StudyState.DONE, 0
    _spool(ctx, ohif_measurement_report(mirrored, [rectangle_group(mirrored, (10, 12, 30, 40), "What is this?")]))
    [job_id] = queue_annotations(ctx)
    asked: list = []
    run = ctx.analyzer.run

    def recording(requests, **kwargs):  # the real model, with what it was asked kept
        asked.extend(requests)
        return run(requests, **kwargs)

    ctx.analyzer.run = recording
    assert run_job(ctx, job_id) == "DONE"
    [caption] = [r for r in asked if r.task is Task.REGION_CAPTIONING]
    assert caption.region == (80 - 30, 12, 80 - 10, 40)
    stored = prepare_study([mirrored]).images[0].pixels
    assert np.array_equal(caption.images[0].pixels, stored[:, ::-1])


def test_an_sr_without_regions_and_an_unreadable_one_are_ignored_with_a_reason(ctx, image):
    _spool(ctx, image)
    report = ohif_measurement_report(image, [])
    _spool(ctx, report)
    broken = gsps_with_text(image, (1, 1, 5, 5), "x")
    _spool(ctx, broken)
    Path(ctx.spool.path_for(str(image.StudyInstanceUID), str(broken.SOPInstanceUID))).write_bytes(b"not DICOM")
    assert queue_annotations(ctx) == []
    with ctx.store.session() as s:
        outcomes = {r.sop_instance_uid: r.annotation for r in s.scalars(select(Instance))}
    assert outcomes[str(report.SOPInstanceUID)].startswith("ignored: no measurement group with image coordinates")
    assert outcomes[str(broken.SOPInstanceUID)].startswith("ignored: unreadable")
    assert outcomes[str(image.SOPInstanceUID)] is None


def test_an_image_the_model_does_not_read_gets_a_reason_at_the_region(ctx):
    ct = f.make_ct_series(1, rows=16, cols=16)[0]
    _spool(ctx, ct)
    report = ohif_measurement_report(ct, [rectangle_group(ct, (1, 1, 8, 8), "Is this a cyst?")])
    _spool(ctx, report)
    [job_id] = queue_annotations(ctx)
    assert run_job(ctx, job_id) == "DONE"
    with ctx.store.session() as s:
        job = s.get(Job, job_id)
        assert "the model does not read it" in job.error, job.error


def test_the_bundled_model_answers_in_the_form_of_each_task(tmp_path):
    """A region gets a caption and a question an answer: plain text, no task tokens, not the prompt echoed.
    Only where the bundled checkpoint declares both tasks (an undeclared task is never run: the answer SR
    says so at the region, see test_the_answer_sr_is_valid_and_holds_question_answer_and_reference)."""
    from medversa.inference import BUNDLED_CHECKPOINT

    if not (BUNDLED_CHECKPOINT / "medversa-checkpoint.json").is_file():
        pytest.skip("no bundled model in this checkout")
    ctx = NodeContext(load_settings(None, data_dir=tmp_path / "node"))
    declared = ctx.analyzer.declaration.tasks
    if declared is not None and not {Task.VQA, Task.REGION_CAPTIONING} <= set(declared):
        pytest.skip(f"the bundled checkpoint does not declare vqa and region_captioning (it declares "
                    f"{', '.join(t.value for t in declared)})")
    image = f.make_cr(224, 224, body_part="CHEST", ViewPosition="PA")
    _spool(ctx, image)
    _spool(ctx, ohif_measurement_report(image, [rectangle_group(image, (40, 50, 120, 150), "Is there an effusion?")]))
    [job_id] = queue_annotations(ctx)
    assert run_job(ctx, job_id) == "DONE"
    [sr_path] = list((ctx.settings.results_dir / str(image.StudyInstanceUID)).glob("SR_*.dcm"))
    [group] = read_answers(pydicom.dcmread(sr_path))
    for text in (group["caption"], group["answer"]):
        assert text.strip() and "<" not in text and "Is there an effusion" not in text, group


def test_a_reader_sr_that_came_with_a_prior_study_starts_no_ask(ctx, image):
    _spool(ctx, image)
    _spool(ctx, ohif_measurement_report(image, [rectangle_group(image, (1, 1, 9, 9), "old question?")]))
    with ctx.store.session() as s:
        s.scalars(select(Study)).one().is_prior = True
    assert queue_annotations(ctx) == []
    with ctx.store.session() as s:
        assert [r.annotation for r in s.scalars(select(Instance)) if r.annotation] == [
            "ignored: retrieved with a prior study, not sent to the node"]


def test_an_image_retrieved_for_an_ask_counts_when_the_pacs_sends_it_for_analysis(ctx, image):
    """A reader annotated a study before the PACS routed it: the image fetched for the answer starts no
    analysis, but the same image routed later does."""
    from medversa.node.scp import RETRIEVED

    path = ctx.spool.path_for(str(image.StudyInstanceUID), str(image.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path, enforce_file_format=True)
    with ctx.store.session() as s:
        s.add(Study(study_instance_uid=str(image.StudyInstanceUID), state=StudyState.DONE))
    record_instance(ctx.store, image, str(path), 1, "PACS", is_prior=True)  # as the ask's retrieve leaves it
    with ctx.store.session() as s:
        s.scalars(select(Instance)).one().calling_ae = RETRIEVED
        s.scalars(select(Study)).one().pending_instances = 0
    record_instance(ctx.store, image, str(path), 1, "PACS")  # the PACS routes the study
    with ctx.store.session() as s:
        study = s.scalars(select(Study)).one()
        assert (study.state, study.pending_instances) == (StudyState.RECEIVING, 1)
        assert s.scalars(select(Instance)).one().calling_ae == "PACS"
    record_instance(ctx.store, image, str(path), 1, "PACS")  # a plain duplicate stays one
    with ctx.store.session() as s:
        assert s.scalars(select(Study)).one().pending_instances == 1
