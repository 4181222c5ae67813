"""The job and study state machines (node/job_states.py): the tables, the move functions, and a
job's real way through the job store (SQLite) to a real C-STORE peer."""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import select

from medversa.node.completion import requeue_waiting_jobs
from medversa.node.job_states import (
    FINISHED_JOB_STATES,
    INITIAL_JOB_STATES,
    JOB_TRANSITIONS,
    STUDY_TRANSITIONS,
    IllegalTransition,
    move_job,
    move_study_state,
)
from medversa.node.job_store import Export, ExportState, Job, JobState, Study, StudyState
from medversa.node.jobs import create_job_version, deliver_due, requeue_failed_job, run_job
from medversa.node.node_context import NodeContext
from medversa.node.scp import record_instance
from medversa.node.settings import load_settings

from . import dicom_factory as f

NODE = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture()
def node(tmp_path) -> NodeContext:
    return NodeContext(load_settings(None, data_dir=tmp_path / "data", idle_seconds=5))


def _study_with_job(node: NodeContext) -> tuple[int, int]:
    ds = f.make_cr(16, 16)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = node.spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, buffer.getvalue()).path
    record_instance(node.store, ds, str(path), 1, "PACS")
    with node.store.session() as s:
        study_id = s.scalars(select(Study)).one().id
    return study_id, create_job_version(node, study_id, ["vqa"], [])


def test_the_tables_cover_every_state_and_name_only_states():
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(STUDY_TRANSITIONS) == set(StudyState)
    assert all(isinstance(t, JobState) for targets in JOB_TRANSITIONS.values() for t in targets)
    assert all(isinstance(t, StudyState) for targets in STUDY_TRANSITIONS.values() for t in targets)
    assert INITIAL_JOB_STATES <= set(JobState) and FINISHED_JOB_STATES <= set(JobState)
    # Only a superseded job is the end of the road: a failed job can be retried, a done one re-exported.
    assert [s for s, targets in JOB_TRANSITIONS.items() if not targets] == [JobState.SUPERSEDED]
    # Every state is reachable from a state a job is created in.
    seen, todo = set(INITIAL_JOB_STATES), list(INITIAL_JOB_STATES)
    while todo:
        for nxt in JOB_TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert seen == set(JobState)


def test_a_legal_move_changes_the_state():
    job = Job(id=7, state=JobState.QUEUED)
    move_job(job, JobState.RUNNING, reason="attempt 1")
    assert job.state is JobState.RUNNING
    study = Study(id=3, state=StudyState.DONE)
    move_study_state(study, StudyState.RECEIVING, reason="new instance")
    assert study.state is StudyState.RECEIVING


@pytest.mark.parametrize(("current", "to"), [(JobState.SUPERSEDED, JobState.RUNNING),
                                             (JobState.DONE, JobState.QUEUED),
                                             (JobState.RECEIVED, JobState.DONE),
                                             (JobState.QUEUED, JobState.RECEIVED),
                                             (JobState.FAILED, JobState.EXPORTING)])
def test_an_illegal_job_move_raises_naming_both_states(current, to):
    job = Job(id=7, state=current)
    with pytest.raises(IllegalTransition, match=rf"job 7: illegal move {current.value} -> {to.value} \(why\)"):
        move_job(job, to, reason="why")
    assert job.state is current


def test_an_illegal_study_move_raises_naming_both_states():
    study = Study(id=3, state=StudyState.PURGED)
    with pytest.raises(IllegalTransition, match="study 3: illegal move PURGED -> QUEUED"):
        move_study_state(study, StudyState.QUEUED)
    assert study.state is StudyState.PURGED


def test_an_illegal_move_rolls_back_the_session(node):
    _, job_id = _study_with_job(node)
    with pytest.raises(IllegalTransition), node.store.session() as s:
        job = s.get(Job, job_id)
        job.error = "changed in the same transaction"
        move_job(job, JobState.DONE)
    with node.store.session() as s:
        job = s.get(Job, job_id)
        assert job.state is JobState.RECEIVED and job.error == ""


def test_a_job_goes_received_queued_running_exporting_done_through_the_store(node, tmp_path):
    from pynetdicom import AE, evt

    received: list[str] = []
    ae = AE("DEST")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda e: received.append(str(e.request.AffectedSOPInstanceUID)) or 0x0000)])
    try:
        study_id, job_id = _study_with_job(node)
        seen = [JobState.RECEIVED]
        with node.store.session() as s:
            assert s.get(Job, job_id).state is JobState.RECEIVED
            assert s.get(Study, study_id).state is StudyState.QUEUED
        queued: list[int] = []
        assert requeue_waiting_jobs(node, lambda j, q: queued.append(j)) == 1
        with node.store.session() as s:
            job = s.get(Job, job_id)
            seen.append(job.state)
            move_job(job, JobState.RUNNING, reason="the worker took it")
            seen.append(job.state)
            result = f.make_cr(16, 16)
            path = f.write_datasets([result], tmp_path / "results")[0]
            s.add(Export(job_id=job_id, sop_instance_uid=str(result.SOPInstanceUID), kind="SR", path=str(path),
                         destination=f"DEST@127.0.0.1:{server.server_address[1]}"))
            move_job(job, JobState.EXPORTING, reason="results written")
            seen.append(job.state)
        assert deliver_due(node) == 1
        assert received == [str(result.SOPInstanceUID)]
        with node.store.session() as s:
            job = s.get(Job, job_id)
            seen.append(job.state)
            assert [e.state for e in job.exports] == [ExportState.DELIVERED]
            assert s.get(Study, study_id).state is StudyState.DONE
        assert queued == [job_id]
        assert seen == [JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING, JobState.DONE]
        assert run_job(node, job_id) == "DONE"  # a redelivered task: nothing moves
    finally:
        server.shutdown()


def test_a_failed_job_is_retried_and_a_superseded_one_never_runs(node):
    study_id, first = _study_with_job(node)
    second = create_job_version(node, study_id, ["vqa"], [])
    with node.store.session() as s:
        assert s.get(Job, first).state is JobState.SUPERSEDED
        move_job(s.get(Job, second), JobState.RUNNING)
        move_job(s.get(Job, second), JobState.FAILED)
    assert run_job(node, first) == "SUPERSEDED"
    assert requeue_failed_job(node, second)
    with node.store.session() as s:
        job = s.get(Job, second)
        assert job.state is JobState.RECEIVED and job.attempts == 0
        with pytest.raises(IllegalTransition, match="SUPERSEDED -> RECEIVED"):
            move_job(s.get(Job, first), JobState.RECEIVED)


def test_no_module_assigns_a_job_or_study_state_directly():
    """Every state change in node/ goes through node/job_states.py."""
    direct = re.compile(r"\.state\s*=\s*(JobState|StudyState)\.|\.state\s*,.*=\s*(JobState|StudyState)\.")
    offenders = [f"{path.name}:{n}" for path in sorted(NODE.glob("*.py")) if path.name != "job_states.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if direct.search(line)]
    assert offenders == []


def test_the_sender_returns_typed_outcomes_and_writes_nothing(node, tmp_path):
    """node/export.py only claims and sends; the rows change when jobs.py applies the outcomes."""
    from medversa.node.export import ExportOutcome, claim_due, next_try, send
    from medversa.node.job_store import utcnow

    _, job_id = _study_with_job(node)
    result = f.make_cr(16, 16)
    path = f.write_datasets([result], tmp_path / "results")[0]
    with node.store.session() as s:
        s.add(Export(job_id=job_id, sop_instance_uid=str(result.SOPInstanceUID), kind="SR", path=str(path),
                     destination="NOWHERE@127.0.0.1:9"))  # discard port: connection refused
    claimed = claim_due(node, job_id, utcnow())
    assert [(c.job_id, c.sop_instance_uid, c.path) for c in claimed] == [(job_id, str(result.SOPInstanceUID), path)]
    assert claim_due(node, job_id, utcnow()) == []  # claimed once: a concurrent sender gets nothing
    [outcome] = send(node, claimed)
    assert isinstance(outcome, ExportOutcome) and outcome.export == claimed[0]
    assert not outcome.delivered and outcome.status.startswith("association failed")
    with node.store.session() as s:
        export = s.scalars(select(Export)).one()
        assert export.attempts == 0 and export.state is ExportState.PENDING and export.last_status == ""
    now = utcnow()
    settings = node.settings.export
    assert next_try(settings.max_attempts, settings, now) == (ExportState.DEAD, None)
    state, retry_at = next_try(1, settings, now)
    assert state is ExportState.PENDING and (retry_at - now).total_seconds() == settings.backoff_initial_s
