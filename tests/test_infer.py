"""DICOM study in -> MedVersa -> SR/SEG/overlays out: the pipeline and ``medversa infer``, end to end."""

import subprocess
import sys

import highdicom as hd
import pydicom

from medversa.dicom_mapping import ObjectKind, StudyOptions
from medversa.inference import Task, scripted_chooser
from medversa.node.infer import algorithm_for, run_infer
from medversa.node.pipeline import analyze_study

from . import dicom_factory as f
from .conftest import SHARED, need
from .dicom_tools import dciodvfy_errors, need_tool

SCRIPT = {
    Task.REPORT_FINDINGS: "The lungs are clear. There is a small left pleural effusion.###",
    Task.REPORT_IMPRESSION: "Small left pleural effusion.###",
    Task.CHEST_PATHOLOGY_CLASSIFICATION: "The main diagnosis is pleural effusion.###",
    Task.PATHOLOGY_DETECTION: "pleural effusion <DET>, pneumothorax <N/A>.###",
    Task.CHEST_ORGAN_SEGMENTATION: "The segmentation mask of {target} is <2DSEG>.###",
    Task.SKIN_LESION_CLASSIFICATION: "The main diagnosis is melanoma.###",
    Task.SKIN_LESION_SEGMENTATION: "The segmentation mask of {target} is <2DSEG>.###",
    Task.ABDOMINAL_ORGAN_SEGMENTATION: "The segmentation mask of {target} is <3DSEG>.###",
    Task.VQA: "Yes, there is a small effusion.###",
    Task.REGION_CAPTIONING: "Blunting of the costophrenic angle.###",
    Task.LONGITUDINAL_COMPARISON: "The effusion is new since the prior study.###",
}


def scripted(tokenizer):
    """Plant each task's answer (random tiny weights would rarely emit task tokens)."""
    return scripted_chooser(tokenizer, {task.value: text for task, text in SCRIPT.items()})


def _options(analyzer, **kwargs):
    return StudyOptions(algorithm=algorithm_for(analyzer), **kwargs)


def _chest_study():
    study = hd.UID()
    frontal = f.make_cr(128, 112, study_uid=study, instance_number=1)
    lateral = f.make_cr(128, 112, study_uid=study, view_position="LL", instance_number=2,
                        series_uid=frontal.SeriesInstanceUID, sop_uid=hd.UID())
    return [lateral, frontal]


def _assert_all_valid(objects, tmp_path):
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i}_{obj.kind}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        errors = dciodvfy_errors(path)
        assert not errors, (obj.kind, errors)


def test_chest_study_gives_sr_seg_gsps_and_burned_in_capture(tiny_analyzer, tmp_path):
    datasets = _chest_study()
    frontal = datasets[1]
    out = analyze_study(datasets, tiny_analyzer, _options(tiny_analyzer), choose_for=scripted(tiny_analyzer.tokenizer))
    kinds = [o.kind for o in out.objects]
    assert kinds[:2] == [ObjectKind.SR, ObjectKind.SR_TEXT]
    assert {ObjectKind.SEG, ObjectKind.PR, ObjectKind.SC} <= set(kinds)
    assert "longitudinal comparison skipped: no prior study" in out.notes
    for obj in out.objects:
        assert obj.dataset.StudyInstanceUID == frontal.StudyInstanceUID
        assert "AI-generated" in obj.dataset.SeriesDescription
    _assert_all_valid(out.objects, tmp_path)
    # Detection and segmentation ran on the frontal view only; the lateral view went to the report.
    seg = next(o.dataset for o in out.objects if o.kind is ObjectKind.SEG)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == frontal.SOPInstanceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert set(labels) <= {"left lung", "right lung", "heart"} and labels
    report = next(r for r in out.results if r.task is Task.REPORT_FINDINGS)
    assert [ref.sop_instance_uid for ref in report.images] == [frontal.SOPInstanceUID, datasets[0].SOPInstanceUID]
    sr_text = str(out.objects[0].dataset)
    assert "Findings" in sr_text and "Impression" in sr_text


def test_rerunning_a_job_gives_the_same_uids(tiny_analyzer):
    datasets = _chest_study()
    options = _options(tiny_analyzer, job_key="job-7:v1")
    first = analyze_study(datasets, tiny_analyzer, options, choose_for=scripted(tiny_analyzer.tokenizer))
    again = analyze_study(datasets, tiny_analyzer, options, choose_for=scripted(tiny_analyzer.tokenizer))
    assert [o.dataset.SOPInstanceUID for o in first.objects] == [o.dataset.SOPInstanceUID for o in again.objects]
    other = analyze_study(datasets, tiny_analyzer, _options(tiny_analyzer, job_key="job-7:v2"),
                          choose_for=scripted(tiny_analyzer.tokenizer))
    assert not {o.dataset.SOPInstanceUID for o in first.objects} & {o.dataset.SOPInstanceUID for o in other.objects}


def test_dermoscopy_gives_classification_seg_and_a_colour_presentation_state(tiny_analyzer, tmp_path):
    photo = f.make_vl_photo(96, 128)
    out = analyze_study([photo], tiny_analyzer, _options(tiny_analyzer), choose_for=scripted(tiny_analyzer.tokenizer))
    kinds = [o.kind for o in out.objects]
    assert kinds.count(ObjectKind.SR) == 1
    assert ObjectKind.SC not in kinds  # no burned-in copy of colour photos by default
    _assert_all_valid(out.objects, tmp_path)
    assert "2092003" in str(out.objects[0].dataset)  # melanoma, coded
    if ObjectKind.PR in kinds:
        pr = next(o for o in out.objects if o.kind is ObjectKind.PR)
        assert pr.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"


def test_abdominal_ct_gives_a_3d_seg_of_the_organs_with_volumes(tiny_analyzer, tmp_path):
    series = f.make_ct_series(8, 2.5, rows=32, cols=32)
    out = analyze_study(series, tiny_analyzer, _options(tiny_analyzer), choose_for=scripted(tiny_analyzer.tokenizer))
    masks = [m.label for r in out.results for m in r.answer.masks_3d]
    assert masks == ["liver", "kidney", "spleen", "pancreas"]
    _assert_all_valid(out.objects, tmp_path)
    segs = [o.dataset for o in out.objects if o.kind is ObjectKind.SEG]
    if segs:  # random weights may leave every mask empty
        assert segs[0].FrameOfReferenceUID == series[0].FrameOfReferenceUID
        assert "ml" in str(out.objects[0].dataset)


def test_longitudinal_comparison_references_the_prior_study(tiny_analyzer, tmp_path):
    current = f.make_cr(96, 96)
    prior = f.make_cr(96, 96)
    out = analyze_study([current], tiny_analyzer, _options(tiny_analyzer, tasks=(Task.LONGITUDINAL_COMPARISON,)),
                        prior_datasets=[prior], choose_for=scripted(tiny_analyzer.tokenizer))
    sr = out.objects[0].dataset
    assert [o.kind for o in out.objects] == [ObjectKind.SR, ObjectKind.SR_TEXT]  # the SR and its text report
    assert prior.StudyInstanceUID in {s.StudyInstanceUID for s in sr.PertinentOtherEvidenceSequence}
    assert "new since the prior study" in str(sr.ContentSequence[-1].ContentSequence[0].TextValue)
    _assert_all_valid(out.objects, tmp_path)


def test_a_question_and_a_region_become_question_answer_items(tiny_analyzer, tmp_path):
    out = analyze_study([f.make_cr(96, 96)], tiny_analyzer,
                        _options(tiny_analyzer, tasks=(), ask="Is there an effusion?", region=(10, 10, 60, 70)),
                        choose_for=scripted(tiny_analyzer.tokenizer))
    texts = [i.TextValue for i in out.objects[0].dataset.ContentSequence[-1].ContentSequence]
    assert "Is there an effusion? <img0>" in texts and "Yes, there is a small effusion." in texts
    assert any("[0.10, 0.10, 0.62, 0.73]" in t for t in texts)
    _assert_all_valid(out.objects, tmp_path)


def test_unsupported_instances_are_skipped_with_a_reason(tiny_analyzer):
    mr = f.base_dataset("1.2.840.10008.5.1.4.1.1.4", "MR")
    out = analyze_study([mr], tiny_analyzer, _options(tiny_analyzer))
    assert out.objects == [] and any("skipped" in n for n in out.notes)


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "medversa.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_medversa_infer_on_files_from_a_plain_checkout(tmp_path):
    need_tool("dciodvfy")
    f.write_datasets(_chest_study() + [f.make_vl_photo(64, 64)], tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    result = _cli("infer", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--preset", "tiny",
                  "--ask", "Is the heart enlarged?")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(line.split("\t")[0] in {k.value for k in ObjectKind} for line in lines)
    written = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(written) == len(lines)
    assert "notes.txt: not a readable DICOM file" in result.stderr
    for path in written:
        assert not dciodvfy_errors(path), path
    srs = [pydicom.dcmread(p) for p in written if p.name.startswith("SR_")]
    assert len(srs) == 2  # one per study
    assert len([p for p in written if p.name.startswith("SR-TEXT_")]) == 2  # and its text report
    texts = [item.TextValue for sr in srs for item in sr.ContentSequence[-1].ContentSequence
             if item.ValueType == "TEXT"]  # besides the study-level findings (CODE items)
    assert any(t.startswith("Is the heart enlarged?") for t in texts)


def test_medversa_infer_on_the_real_inputs(tmp_path):
    inputs = need(SHARED / "data" / "medinterp-mini" / "dicom" / "inputs")
    result = _cli("infer", str(inputs), "--out", str(tmp_path), "--preset", "tiny", "--region", "100,120,400,600",
                  "--ask", "Is there a pleural effusion?")
    assert result.returncode == 0, result.stderr
    written = sorted(tmp_path.glob("*.dcm"))
    assert len(written) == len(result.stdout.strip().splitlines()) >= 2
    for path in written:
        assert not dciodvfy_errors(path), path
    assert "no abdominal coverage" in result.stderr  # the CT series has no abdominal body part


def test_bad_region_is_a_clear_error(tmp_path):
    result = _cli("infer", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "tiny", "--region", "1,2,3")
    assert result.returncode != 0 and "X0,Y0,X1,Y1" in (result.stderr + result.stdout)


def test_run_infer_reports_an_empty_input(tiny_analyzer, tmp_path):
    written, messages, analysed = run_infer([tmp_path], tmp_path / "out", tiny_analyzer, _options(tiny_analyzer))
    assert written == [] and analysed == 0 and "no DICOM study found in the inputs" in messages


def test_ct_from_real_dicom_series_sorted_and_segmented(tiny_analyzer, tmp_path):
    folder = need(SHARED / "data" / "medinterp-mini" / "dicom" / "inputs")
    series = [pydicom.dcmread(p) for p in sorted(folder.glob("dcmqi_ct-3slice_*.dcm"))]
    out = analyze_study(series, tiny_analyzer, _options(tiny_analyzer))
    # No abdominal body part: the series is plain CT and abdominal segmentation does not run by default...
    assert out.objects == [] and any("no abdominal coverage" in n for n in out.notes)
    # ...but it does when asked for explicitly, on the volume sorted along the slice normal.
    asked = analyze_study(series, tiny_analyzer, _options(tiny_analyzer, tasks=(Task.ABDOMINAL_ORGAN_SEGMENTATION,)),
                          choose_for=scripted(tiny_analyzer.tokenizer))
    volume = asked.inputs.volumes[0]
    positions = [p[2] for p in volume.ref.image_positions]
    assert positions == sorted(positions) or positions == sorted(positions, reverse=True)
    assert all(m.mask.shape == volume.hu.shape for r in asked.results for m in r.answer.masks_3d)
    _assert_all_valid(asked.objects, tmp_path)


def test_volume_masks_keep_the_source_geometry(tiny_analyzer):
    series = f.make_ct_series(6, 2.0, rows=24, cols=28)
    out = analyze_study(series, tiny_analyzer, _options(tiny_analyzer), choose_for=scripted(tiny_analyzer.tokenizer))
    shapes = [m.mask.shape for r in out.results for m in r.answer.masks_3d]
    assert shapes == [(6, 24, 28)] * 4
