"""Study completion, routing, job versions, exports with backoff and dead-letter, retention."""

import datetime as dt
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import select

from medversa.node.completion import queue_due_studies
from medversa.node.export import backoff_s
from medversa.node.job_store import (
    Export,
    ExportState,
    Job,
    JobState,
    Study,
    StudyState,
    utcnow,
)
from medversa.node.jobs import create_job_version, deliver_due, finish_if_delivered, retry_job_exports
from medversa.node.node_context import NodeContext
from medversa.node.retention import apply_retention
from medversa.node.routing import InstanceFacts, RoutingRule, default_rules, route, tasks_for
from medversa.node.scp import record_instance
from medversa.node.settings import load_settings

from . import dicom_factory as f


@pytest.fixture()
def ctx(tmp_path):
    def make(**flags):
        return NodeContext(load_settings(None, data_dir=tmp_path / "data", idle_seconds=5, **flags))
    return make


def _receive(ctx, datasets, when=None):
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = ctx.spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, buffer.getvalue()).path
        record_instance(ctx.store, ds, str(path), 1, "PACS")
    if when is not None:
        with ctx.store.session() as s:
            for study in s.scalars(select(Study)):
                study.last_received = when


def test_default_rules_route_each_kind_of_study():
    cxr = InstanceFacts("CR", "CHEST", "1.2.840.10008.5.1.4.1.1.1", "PACS", "CHEST PA", "chest_radiograph")
    derm = InstanceFacts("XC", "SKIN", "1.2.840.10008.5.1.4.1.1.77.1.4", "PACS", "", "dermoscopy")
    ct = InstanceFacts("CT", "ABDOMEN", "1.2.840.10008.5.1.4.1.1.2", "PACS", "", "abdominal_ct")
    mr = InstanceFacts("MR", "BRAIN", "1.2.840.10008.5.1.4.1.1.4", "PACS", "", "")
    head_ct = InstanceFacts("CT", "HEAD", "1.2.840.10008.5.1.4.1.1.2", "PACS", "", "ct")
    rules = default_rules()
    assert tasks_for([cxr], rules)[0][:2] == ["report_findings", "report_impression"]
    assert "longitudinal_comparison" in tasks_for([cxr], rules)[0]
    assert tasks_for([derm], rules)[0] == ["skin_lesion_classification", "skin_lesion_segmentation"]
    assert tasks_for([ct], rules)[0] == ["abdominal_organ_segmentation"]
    assert tasks_for([mr], rules) == ([], [])
    assert tasks_for([head_ct], rules) == ([], [])  # no MedVersa task for a CT without the abdomen


def test_every_kind_the_classifier_accepts_reaches_its_default_rule(ctx):
    """A CR whose body part is THORAX and a CT without body part whose description says abdomen were
    accepted by the classifier but matched no rule (issue 11); the rules now route on the kind."""
    node = ctx()
    thorax = f.make_cr(16, 16)
    thorax.BodyPartExamined = "THORAX"
    ct = f.make_ct_series(3, rows=8, cols=8, body_part=None, StudyDescription="CT ABDOMEN WITH CONTRAST")
    no_part = f.make_cr(16, 16)
    del no_part.BodyPartExamined
    no_part.StudyDescription = "XR CHEST 1 VIEW"
    _receive(node, [thorax, *ct, no_part], when=utcnow() - dt.timedelta(minutes=1))
    queue_due_studies(node, lambda j, q: None)
    with node.store.session() as s:
        by_study = {j.study.study_instance_uid: j for j in s.scalars(select(Job))}
        assert "chest_organ_segmentation" in by_study[thorax.StudyInstanceUID].tasks
        assert by_study[ct[0].StudyInstanceUID].tasks == ["abdominal_organ_segmentation"]
        assert "report_findings" in by_study[no_part.StudyInstanceUID].tasks


def test_rules_match_calling_ae_and_description_patterns():
    rule = RoutingRule(name="er only", modality="CR", calling_ae="ER_.*", study_description="portable",
                       tasks=["vqa"], questions=["Is there a pneumothorax?"])
    hit = InstanceFacts("CR", "CHEST", "x", "ER_PACS", "CHEST PORTABLE AP")
    assert route([hit], [rule]).tasks == ["vqa"]
    assert route([hit], [rule]).questions == ["Is there a pneumothorax?"]
    assert tasks_for([InstanceFacts("CR", "CHEST", "x", "OR_PACS", "PORTABLE")], [rule])[0] == []


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "ct chest", "modality": "CT", "tasks": ["chest_organ_segmentation"]},
     "routing rule 'ct chest': task chest_organ_segmentation cannot run on abdominal_ct, ct"),
    ({"name": "skin seg on cxr", "series_kind": "chest_radiograph", "tasks": ["skin_lesion_segmentation"]},
     "task skin_lesion_segmentation cannot run on chest_radiograph (it runs on dermoscopy)"),
    ({"name": "ask", "series_kind": "chest_radiograph", "tasks": ["vqa"]}, "task vqa needs questions"),
    ({"name": "captions", "modality": "CR", "tasks": ["region_captioning"]}, "region_captioning needs a region"),
    ({"name": "typo", "series_kind": "chest_xray", "tasks": ["report_findings"]}, "match no series the node accepts"),
])
def test_config_refuses_a_rule_whose_task_cannot_run(tmp_path, rule, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings(None, data_dir=tmp_path, routing=[rule])


def test_config_check_names_the_rule_on_the_command_line(tmp_path):
    config = tmp_path / "medversa.yaml"
    config.write_text("routing:\n  - name: lungs on CT\n    modality: CT\n    tasks: [chest_organ_segmentation]\n")
    result = subprocess.run([sys.executable, "-m", "medversa.cli", "config", "check", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "routing rule 'lungs on CT': task chest_organ_segmentation cannot run on" in result.stdout + result.stderr


def test_a_study_is_queued_only_after_the_idle_time(ctx):
    node = ctx()
    queued = []
    _receive(node, [f.make_cr(16, 16)])
    assert queue_due_studies(node, lambda j, q: queued.append((j, q))) == []
    later = utcnow() + dt.timedelta(seconds=6)
    jobs = queue_due_studies(node, lambda j, q: queued.append((j, q)), now=later)
    assert len(jobs) == 1 and queued == [(jobs[0], "medversa-demo")]
    with node.store.session() as s:
        job = s.get(Job, jobs[0])
        assert job.state is JobState.QUEUED and job.version == 1
        assert job.study.state is StudyState.QUEUED and job.study.pending_instances == 0
        assert "report_findings" in job.tasks


def test_late_instances_make_a_new_job_version(ctx):
    node = ctx()
    first = f.make_cr(16, 16)
    past = utcnow() - dt.timedelta(minutes=1)
    _receive(node, [first], when=past)
    [job1] = queue_due_studies(node, lambda j, q: None)
    with node.store.session() as s:
        s.get(Job, job1).state = JobState.DONE
        s.get(Job, job1).study.state = StudyState.DONE
    _receive(node, [f.make_cr(16, 16, study_uid=first.StudyInstanceUID)], when=past)
    [job2] = queue_due_studies(node, lambda j, q: None)
    with node.store.session() as s:
        assert s.get(Job, job2).version == 2 and job2 != job1


def test_a_broker_outage_keeps_jobs_and_queues_them_later(ctx):
    node = ctx()
    _receive(node, [f.make_cr(16, 16)], when=utcnow() - dt.timedelta(minutes=1))

    def down(job_id, queue):
        raise ConnectionError("redis is down")

    [job] = queue_due_studies(node, down)
    with node.store.session() as s:
        assert s.get(Job, job).state is JobState.RECEIVED
    queued = []
    queue_due_studies(node, lambda j, q: queued.append(j))
    assert queued == [job]


def test_a_study_no_rule_matches_is_closed_without_a_job(ctx):
    node = ctx()
    _receive(node, [f.base_dataset("1.2.840.10008.5.1.4.1.1.4", "MR")], when=utcnow() - dt.timedelta(minutes=1))
    assert queue_due_studies(node, lambda j, q: None) == []
    with node.store.session() as s:
        assert s.scalars(select(Study)).one().state is StudyState.DONE


def test_a_study_of_films_the_model_cannot_read_gets_an_sr_that_says_why(ctx, tmp_path):
    """A decubitus film alone used to close its study with "no routing rule matched": nothing reached
    PACS and the reader could not tell a skipped study from one still pending. Now the worker writes
    an SR naming the film and why; a knee film or an MR (no one expects them read) still gets nothing,
    nor does a decubitus film when no rule routes chest films or the notice is turned off."""
    import pydicom

    from medversa.node.jobs import run_job

    when = utcnow() - dt.timedelta(minutes=1)
    node = ctx(**{"model.preset": "tiny"})
    decubitus = f.make_cr(32, 32, view_position="LLD")
    knee = f.make_cr(32, 32, body_part="KNEE")
    _receive(node, [decubitus, knee, f.base_dataset("1.2.840.10008.5.1.4.1.1.4", "MR")], when=when)
    [job_id] = queue_due_studies(node, lambda j, q: None)
    with node.store.session() as s:
        job = s.get(Job, job_id)
        assert job.study.study_instance_uid == decubitus.StudyInstanceUID
        assert job.tasks == [] and "not analysed: a decubitus film (ViewPosition LLD)" in job.notes
        closed = {st.study_instance_uid: st.state for st in s.scalars(select(Study))}
    assert list(closed.values()).count(StudyState.DONE) == 2  # the knee film and the MR: nothing to do
    assert run_job(node, job_id) == "DONE"
    folder = node.settings.results_dir / decubitus.StudyInstanceUID
    [sr] = [pydicom.dcmread(p) for p in folder.glob("SR_*.dcm")]
    comments = [i.TextValue for group in sr.ContentSequence for i in group.get("ContentSequence", [])
                if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == ["Not analysed: a decubitus film (ViewPosition LLD). MedVersa made no results for this study."]
    assert len(list(folder.glob("SR-TEXT_*.dcm"))) == 1 and len(list(folder.glob("*.dcm"))) == 2

    for name, flags in (("notice off", {"not_analysed_notice": False}),
                        ("ct only", {"routing": [{"name": "ct only", "series_kind": "abdominal_ct",
                                                  "tasks": ["abdominal_organ_segmentation"]}]})):
        other = NodeContext(load_settings(None, data_dir=tmp_path / name, idle_seconds=5, **flags))
        _receive(other, [f.make_cr(32, 32, view_position="RLD")], when=when)
        assert queue_due_studies(other, lambda j, q: None) == [], flags
        with other.store.session() as s:
            assert s.scalars(select(Study)).one().state is StudyState.DONE


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_s(n, 5, 60) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]


def _job_with_export(node, destination):
    _receive(node, [f.make_cr(16, 16)])
    with node.store.session() as s:
        study = s.scalars(select(Study)).one()
        study_id = study.id
    job_id = create_job_version(node, study_id, ["vqa"], [])
    result = f.make_cr(16, 16)
    path = f.write_datasets([result], node.settings.results_dir)[0]
    with node.store.session() as s:
        job = s.get(Job, job_id)
        job.state = JobState.EXPORTING
        job.finished_at = utcnow()
        s.add(Export(job_id=job_id, sop_instance_uid=str(result.SOPInstanceUID), kind="SR", path=str(path),
                     destination=destination))
    return job_id


def test_an_unreachable_destination_backs_off_then_dead_letters_and_retry_revives(ctx):
    node = ctx(**{"export.max_attempts": 2, "export.backoff_initial_s": 1.0})
    job_id = _job_with_export(node, "NOWHERE@127.0.0.1:9")  # discard port: connection refused
    assert deliver_due(node) == 0
    with node.store.session() as s:
        export = s.scalars(select(Export)).one()
        assert export.state is ExportState.PENDING and export.attempts == 1
        assert export.next_attempt_at > utcnow()
    assert deliver_due(node) == 0  # not due yet: nothing tried
    deliver_due(node, now=utcnow() + dt.timedelta(seconds=2))
    with node.store.session() as s:
        export = s.scalars(select(Export)).one()
        assert export.state is ExportState.DEAD and export.attempts == 2
    assert len(retry_job_exports(node, job_id)) == 1
    with node.store.session() as s:
        assert s.scalars(select(Export)).one().state is ExportState.PENDING


def test_delivery_to_a_real_scp_finishes_the_job(ctx, tmp_path):
    from pynetdicom import AE, evt

    received = []
    ae = AE("DEST")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE,
                                            lambda e: received.append(e.request.AffectedSOPInstanceUID) or 0)])
    try:
        node = ctx()
        job_id = _job_with_export(node, f"DEST@127.0.0.1:{server.server_address[1]}")
        assert deliver_due(node) == 1
        assert len(received) == 1
        assert finish_if_delivered(node, job_id) == "DONE"
    finally:
        server.shutdown()


def test_retention_removes_only_finished_delivered_studies(ctx):
    node = ctx(**{"retention.days": 1})
    done, busy = f.make_cr(16, 16), f.make_cr(16, 16)
    old = utcnow() - dt.timedelta(days=2)
    _receive(node, [done, busy], when=old)
    with node.store.session() as s:
        for study in s.scalars(select(Study)):
            job = Job(study_id=study.id, version=1, tasks=[], state=JobState.DONE if study.study_instance_uid ==
                      done.StudyInstanceUID else JobState.EXPORTING)
            s.add(job)
            study.state = StudyState.DONE if job.state is JobState.DONE else StudyState.QUEUED
            study.pending_instances = 0
    removed = apply_retention(node)
    assert removed == [done.StudyInstanceUID]
    assert not (node.spool.root / done.StudyInstanceUID).exists()
    assert (node.spool.root / busy.StudyInstanceUID).exists()
    with node.store.session() as s:
        assert len(s.scalars(select(Job)).all()) == 2  # rows stay


def _finished(node, when=None, destination: str | None = "PACS@127.0.0.1:104") -> str:
    """A study received ``when``, its job DONE and, with a destination, its one export delivered."""
    ds = f.make_cr(16, 16)
    _receive(node, [ds], when=when)  # (``when`` dates every study so far: make the older ones first)
    with node.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID)).one()
        job = Job(study_id=study.id, version=1, tasks=[], state=JobState.DONE)
        if destination:
            job.exports.append(Export(sop_instance_uid="1.2.3", kind="SR", path="sr.dcm", destination=destination,
                                      state=ExportState.DELIVERED))
        s.add(job)
        study.state, study.pending_instances = StudyState.DONE, 0
    return ds.StudyInstanceUID


def test_recent_studies_survive_unless_the_disk_is_nearly_full(ctx, monkeypatch):
    node = ctx(**{"retention.days": 30, "retention.cleanup_above": 0.5})
    delivered = _finished(node)
    monkeypatch.setattr(node.spool, "disk_fill", lambda: 0.1)
    assert apply_retention(node) == []
    monkeypatch.setattr(node.spool, "disk_fill", lambda: 0.9)
    assert apply_retention(node) == [delivered]
    assert Path(node.spool.root).exists()


def test_a_study_with_no_destination_keeps_its_results_through_an_emergency_until_its_days_pass(ctx, monkeypatch):
    """Its results folder is the only copy of its results: a full disk is met by refusing new
    associations (refuse_above), not by deleting them minutes after the job."""
    node = ctx(**{"retention.days": 3, "retention.cleanup_above": 0.5})
    expired = _finished(node, when=utcnow() - dt.timedelta(days=4), destination=None)
    recent = _finished(node, destination=None)
    monkeypatch.setattr(node.spool, "disk_fill", lambda: 0.99)
    assert apply_retention(node) == [expired]
    assert (node.spool.root / recent).exists()


def test_disk_fill_is_the_share_df_shows_reserved_blocks_left_out(ctx, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    node = ctx()
    usage = namedtuple("usage", "total used free")
    # 100 GiB disk, 5 GiB reserved for root: 71 used, 24 available -> df says 75 %, not 76 %.
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(100 * 2**30, 71 * 2**30, 24 * 2**30))
    assert node.spool.disk_fill() == pytest.approx(71 / 95)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(0, 0, 0))
    assert node.spool.disk_fill() == 0.0


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "medversa.cli", *args], capture_output=True, text=True, timeout=120)


def test_status_and_retry_commands(ctx):
    node = ctx(**{"export.max_attempts": 1})
    job_id = _job_with_export(node, "NOWHERE@127.0.0.1:9")
    deliver_due(node)
    data_dir = str(node.settings.data_dir)
    status = _cli("status", "--data-dir", data_dir)
    assert status.returncode == 0 and "exports DEAD: 1" in status.stdout and f"job {job_id} v1" in status.stdout
    retried = _cli("retry", str(job_id), "--data-dir", data_dir)
    assert retried.returncode == 1 and "1 export(s) retried, 0 delivered" in retried.stdout
    assert _cli("retry", "999", "--data-dir", data_dir).returncode == 1


def test_retry_puts_a_failed_job_back_in_the_queue(ctx):
    node = ctx()
    _receive(node, [f.make_cr(16, 16)])
    with node.store.session() as s:
        study_id = s.scalars(select(Study)).one().id
    job_id = create_job_version(node, study_id, ["vqa"], [])
    with node.store.session() as s:
        s.get(Job, job_id).state = JobState.FAILED
    retry_job_exports(node, job_id)
    queued = []
    queue_due_studies(node, lambda j, q: queued.append(j))
    assert queued == [job_id]
