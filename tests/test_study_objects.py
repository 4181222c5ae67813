"""dicom_mapping's side of a study: plan -> (the tiny model) -> build_study_objects, one call for all kinds."""

import highdicom as hd
import pydicom
import pytest

from medversa.dicom_mapping import (
    ObjectKind,
    PlannedRequest,
    StudyOptions,
    WrittenObject,
    answer_uids,
    build_study_objects,
    plan_study,
    prepare_study,
    with_image_tag,
)
from medversa.inference import Task
from medversa.node.infer import algorithm_for

from . import dicom_factory as f
from .dicom_tools import assert_valid, pixelmed_sr_report
from .test_infer import scripted


def test_object_kinds_keep_the_names_files_and_export_rows_use():
    assert [k.value for k in ObjectKind] == ["SR", "SR-TEXT", "SEG", "PR", "SC", "KO"]
    assert f"{ObjectKind.SR_TEXT}_1.2.3.dcm" == "SR-TEXT_1.2.3.dcm" and str(ObjectKind.SEG) == "SEG"
    assert ObjectKind("PR") is ObjectKind.PR and ObjectKind.KO == "KO"
    # UIDs derive from the names the first versions used: the same job keeps its UIDs.
    assert ObjectKind.SR_TEXT.uid_part == "SR-text" and ObjectKind.SEG.uid_part == "SEG"


def test_a_question_names_its_image_once():
    assert with_image_tag("Is there an effusion? ") == "Is there an effusion? <img0>"
    assert with_image_tag("Compare <img1> with <img0>.") == "Compare <img1> with <img0>."


@pytest.fixture(scope="module")
def chest(tiny_analyzer):
    """A two-view chest radiograph planned with the defaults and answered by the tiny model (scripted text)."""
    study = hd.UID()
    frontal = f.make_cr(128, 112, study_uid=study, instance_number=1)
    lateral = f.make_cr(128, 112, study_uid=study, view_position="LL", instance_number=2,
                        series_uid=frontal.SeriesInstanceUID, sop_uid=hd.UID())
    datasets = [lateral, frontal]
    inputs = prepare_study(datasets)
    options = StudyOptions(algorithm=algorithm_for(tiny_analyzer), key_objects=True, job_key="job-1:v1")
    planned, notes = plan_study(inputs, options)
    answers = tiny_analyzer.run([p.request for p in planned], choose_for=scripted(tiny_analyzer.tokenizer))
    return datasets, inputs, options, planned, answers, notes


def test_planning_keeps_each_request_with_the_images_it_was_made_from(chest):
    datasets, inputs, _, planned, answers, notes = chest
    lateral, frontal = datasets
    assert "longitudinal comparison skipped: no prior study" in notes
    assert all(isinstance(p, PlannedRequest) for p in planned)
    by_task = {p.request.task: p for p in planned}
    # Reports read both views (frontal first); detection and segmentation the frontal view alone.
    assert [i.ref.sop_instance_uid for i in by_task[Task.REPORT_FINDINGS].images] == [frontal.SOPInstanceUID,
                                                                                     lateral.SOPInstanceUID]
    assert [i.ref.sop_instance_uid for i in by_task[Task.PATHOLOGY_DETECTION].images] == [frontal.SOPInstanceUID]
    result = by_task[Task.PATHOLOGY_DETECTION].result(answers[planned.index(by_task[Task.PATHOLOGY_DETECTION])])
    assert [r.sop_instance_uid for r in result.images] == [frontal.SOPInstanceUID] and result.volume is None


def test_one_call_builds_sr_text_seg_pr_sc_and_ko_with_one_header(chest):
    datasets, inputs, options, planned, answers, _ = chest
    built = build_study_objects(datasets, inputs, planned, answers, options)
    kinds = [o.kind for o in built.objects]
    assert kinds[:2] == [ObjectKind.SR, ObjectKind.SR_TEXT]
    assert {ObjectKind.SEG, ObjectKind.PR, ObjectKind.SC, ObjectKind.KO} <= set(kinds)
    assert all(isinstance(o, WrittenObject) and isinstance(o.kind, ObjectKind) for o in built.objects)
    assert [r.task for r in built.results] == [p.request.task for p in planned]
    alg = options.algorithm
    for obj in built.objects:
        ds = obj.dataset
        assert ds.StudyInstanceUID == inputs.study_instance_uid
        assert ds.Manufacturer == alg.manufacturer and ds.ManufacturerModelName == alg.model_name
        assert list(ds.SoftwareVersions) == list(alg.software_versions)
        assert ds.SpecificCharacterSet == "ISO_IR 192" and "AI-generated, unverified" in ds.SeriesDescription
        [ours] = [e for e in ds.ContributingEquipmentSequence if e.get("DeviceUID") == alg.device_uid]
        assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"  # IHE AIR: Processing Algorithm
        # Device Serial Number: required by SEG and presentation states only, written by them only.
        assert ("DeviceSerialNumber" in ds) == (obj.kind in (ObjectKind.SEG, ObjectKind.PR)), obj.kind
        if obj.kind in (ObjectKind.SEG, ObjectKind.PR):
            assert ds.ContentLabel == "MEDVERSA" and "AI-generated" in ds.ContentDescription
    # Each kind in a series of its own, instances numbered from 1 in build order.
    assert len({o.dataset.SeriesInstanceUID for o in built.objects}) == len(set(kinds))
    for kind in set(kinds):
        numbers = [int(o.dataset.InstanceNumber) for o in built.objects if o.kind is kind]
        assert numbers == list(range(1, len(numbers) + 1)), kind


def test_building_again_gives_the_same_uids_and_another_key_other_ones(chest):
    datasets, inputs, options, planned, answers, _ = chest
    first = build_study_objects(datasets, inputs, planned, answers, options)
    again = build_study_objects(datasets, inputs, planned, answers, options)
    assert [o.dataset.SOPInstanceUID for o in first.objects] == [o.dataset.SOPInstanceUID for o in again.objects]
    other = StudyOptions(algorithm=options.algorithm, key_objects=True, job_key="job-1:v2")
    moved = build_study_objects(datasets, inputs, planned, answers, other)
    assert not {o.dataset.SOPInstanceUID for o in first.objects} & {o.dataset.SOPInstanceUID for o in moved.objects}
    # The answer SR of an ask job derives from the ask's own key, never from the study's.
    assert answer_uids(options.algorithm.org_root, "job-1:v1")[1] not in {o.dataset.SOPInstanceUID
                                                                         for o in first.objects}


def test_what_the_options_leave_out_is_not_built(chest):
    datasets, inputs, options, planned, answers, _ = chest
    plain = StudyOptions(algorithm=options.algorithm, presentation_states=False, burned_in=False, job_key="k")
    kinds = [o.kind for o in build_study_objects(datasets, inputs, planned, answers, plain).objects]
    assert kinds[:2] == [ObjectKind.SR, ObjectKind.SR_TEXT] and not {ObjectKind.PR, ObjectKind.SC,
                                                                      ObjectKind.KO} & set(kinds)


def test_answers_must_match_the_planned_requests(chest):
    datasets, inputs, options, planned, answers, _ = chest
    with pytest.raises(ValueError, match="answer"):
        build_study_objects(datasets, inputs, planned, answers[:-1], options)
    assert build_study_objects(datasets, inputs, [], [], options).objects == []


def test_the_sr_names_the_films_the_node_left_out(tiny_analyzer, tmp_path):
    """A radiologist reading the SR of a study with an upright and a decubitus film, and one whose
    Patient Orientation contradicts itself, learns that the results cover neither of those two."""
    study = hd.UID()
    upright = f.make_cr(128, 112, study_uid=study, instance_number=1)
    decubitus = f.make_cr(128, 112, study_uid=study, view_position="LLD", instance_number=2, sop_uid=hd.UID())
    contradictory = f.make_cr(128, 112, study_uid=study, instance_number=3, sop_uid=hd.UID(),
                              PatientOrientation=["L", "R"])
    knee = f.make_cr(128, 112, study_uid=study, body_part="KNEE", instance_number=4, sop_uid=hd.UID())
    datasets = [upright, decubitus, contradictory, knee]
    inputs = prepare_study(datasets)
    assert [i.ref.sop_instance_uid for i in inputs.images] == [upright.SOPInstanceUID]
    assert [s.reader_note for s in inputs.skipped] == [
        "a decubitus film (ViewPosition LLD)",
        "a film whose Patient Orientation L\\R is contradictory, so its sides are unknown",
        None]  # a knee film was never the node's to read
    options = StudyOptions(algorithm=algorithm_for(tiny_analyzer), job_key="job-2:v1")
    planned, _ = plan_study(inputs, options)
    answers = tiny_analyzer.run([p.request for p in planned], choose_for=scripted(tiny_analyzer.tokenizer))
    built = build_study_objects(datasets, inputs, planned, answers, options)
    sr, text = built.objects[0].dataset, built.objects[1].dataset
    wanted = ["Not analysed: a decubitus film (ViewPosition LLD). The results above do not cover it.",
              "Not analysed: a film whose Patient Orientation L\\R is contradictory, so its sides are unknown. "
              "The results above do not cover it."]
    path = assert_valid(sr, tmp_path, "sr")
    assert isinstance(hd.sr.srread(path), hd.sr.Comprehensive3DSR)  # highdicom reads it back
    comments = [item.TextValue for group in pydicom.dcmread(path).ContentSequence
                if group.ConceptNameCodeSequence[0].CodeValue == "C0034375"
                for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == wanted
    assert all(line in _document_text(assert_valid(text, tmp_path, "text")) for line in
               [f"Comment: {w}" for w in wanted])
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    left_out = {decubitus.SOPInstanceUID, contradictory.SOPInstanceUID}
    assert upright.SOPInstanceUID in evidence and not left_out & evidence


def test_a_study_with_nothing_to_read_gets_an_sr_naming_what_was_left_out(tiny_analyzer, tmp_path):
    """A decubitus film alone: no model run, but an SR and its text report that name the film and say
    no results were made, with the film as evidence; valid for dciodvfy, highdicom and PixelMed."""
    decubitus = f.make_cr(128, 112, view_position="LLD")
    inputs = prepare_study([decubitus])
    options = StudyOptions(algorithm=algorithm_for(tiny_analyzer), job_key="job-3:v1")
    planned, _ = plan_study(inputs, options)
    assert planned == []
    built = build_study_objects([decubitus], inputs, [], [], options)
    assert [o.kind for o in built.objects] == [ObjectKind.SR, ObjectKind.SR_TEXT] and built.results == []
    sr, text = (o.dataset for o in built.objects)
    wanted = "Not analysed: a decubitus film (ViewPosition LLD). MedVersa made no results for this study."
    path = assert_valid(sr, tmp_path, "sr")
    assert isinstance(hd.sr.srread(path), hd.sr.Comprehensive3DSR)
    errors, _ = pixelmed_sr_report(path)
    assert errors == []
    assert wanted in _document_text(path).splitlines()
    assert f"Comment: {wanted}" in _document_text(assert_valid(text, tmp_path, "text"))
    evidence = [r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert evidence == [decubitus.SOPInstanceUID]
    off = StudyOptions(algorithm=options.algorithm, job_key="job-3:v1", not_analysed_notice=False)
    assert build_study_objects([decubitus], inputs, [], [], off).objects == []


def _document_text(path) -> str:
    """Every text value of an SR document, depth first."""
    def walk(items):
        for item in items:
            yield getattr(item, "TextValue", "")
            yield from walk(item.get("ContentSequence", []))
    return "\n".join(walk(pydicom.dcmread(path).ContentSequence))


def test_the_text_report_says_which_film_each_measurement_is_on_when_there_are_several(tiny_analyzer, tmp_path):
    """Two frontal films of one study (a PA and a repeat AP) each get "left lung: area ..." lines; the text
    report names the film of each, as a viewer shows it (view, series and image number). A study with
    one film keeps the plain lines."""
    study = hd.UID()
    pa = f.make_cr(128, 112, study_uid=study, series_number=3, instance_number=1)
    ap = f.make_cr(128, 112, study_uid=study, view_position="AP", series_number=4, instance_number=1,
                   series_uid=hd.UID(), sop_uid=hd.UID())
    options = StudyOptions(algorithm=algorithm_for(tiny_analyzer), tasks=(Task.CHEST_ORGAN_SEGMENTATION,),
                           job_key="job-4:v1")

    def text_lines(datasets):
        inputs = prepare_study(datasets)
        planned, _ = plan_study(inputs, options)
        answers = tiny_analyzer.run([p.request for p in planned], choose_for=scripted(tiny_analyzer.tokenizer))
        built = build_study_objects(datasets, inputs, planned, answers, options)
        text = next(o.dataset for o in built.objects if o.kind is ObjectKind.SR_TEXT)
        return [line for line in _document_text(assert_valid(text, tmp_path, "text")).splitlines()
                if "AI result" in line]

    both = text_lines([pa, ap])
    assert both and all(" on the PA film (series 3, image 1): " in line or " on the AP film (series 4, image 1): "
                        in line for line in both), both
    assert {line.split(" on the ")[0] for line in both if "PA film" in line} == \
           {line.split(" on the ")[0] for line in both if "AP film" in line}  # the same structures on each
    alone = text_lines([pa])
    assert alone and not any(" on the " in line for line in alone)
    assert sorted(line.split(":")[0] for line in alone) == sorted(
        line.split(" on the ")[0] for line in both if "PA film" in line)
