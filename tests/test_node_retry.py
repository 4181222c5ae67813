"""Failures that say what they are: transient causes retry with backoff, permanent ones fail at once.

The job store, spool and model are real (the tiny preset); the transient causes are real too: a PACS
port nobody listens on (connection refused), a results disk that is full (a small tmpfs), a PACS
that is down and comes back while ``medversa serve`` keeps retrying through Celery.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import select

from medversa.benchmarks.peers import free_port
from medversa.node.job_failures import JobFailedError
from medversa.node.job_store import Job, JobState, Study
from medversa.node.jobs import TransientJobError, create_job_version, requeue_failed_job, retry_delay, run_job
from medversa.node.node_context import NodeContext
from medversa.node.scp import record_instance
from medversa.node.settings import load_settings

from . import dicom_factory as f
from .node_process import mount_tmpfs, unmount
from .reliability import record_case

TASKS = ["report_impression", "longitudinal_comparison"]


def _node(tmp: Path, **flags) -> NodeContext:
    return NodeContext(load_settings(None, data_dir=tmp / "data", model={"preset": "tiny"},
                                     jobs={"max_attempts": 2, "retry_initial_s": 0.5, "retry_max_s": 1}, **flags))


def _job(node: NodeContext, datasets=None, payload: bytes | None = None, tasks=TASKS) -> int:
    """A study received and recorded as the SCP would, and its first job version."""
    datasets = datasets or [f.make_cr(32, 32, PatientID="RETRY-1", StudyDate="20240102")]
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        spooled = node.spool.write(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), payload or buffer.getvalue())
        record_instance(node.store, ds, str(spooled.path), spooled.size, "TEST")
    with node.store.session() as s:
        study_id = s.scalars(select(Study.id)).one()
    return create_job_version(node, study_id, list(tasks), [])


def _state(node: NodeContext, job_id: int) -> Job:
    with node.store.session() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def test_a_pacs_that_refuses_the_prior_query_is_retried_then_the_job_runs_without_it(tmp_path):
    closed = free_port()  # nobody listens: connection refused, as when the PACS is restarting
    node = _node(tmp_path, pacs={"peer": f"PACS@127.0.0.1:{closed}", "query_timeout_s": 2})
    job_id = _job(node)
    with pytest.raises(TransientJobError) as raised:
        run_job(node, job_id)
    assert raised.value.retry_in == pytest.approx(0.5)
    job = _state(node, job_id)
    assert job.state is JobState.QUEUED and job.attempts == 1
    assert job.error.startswith("attempt 1 of 2 failed, retry in 0 s: TransientJobError: prior study:"), job.error
    assert "prior query failed" in job.error
    # The last attempt does not fail the job over the prior: the other tasks run, the note says why.
    assert run_job(node, job_id) == "DONE"
    job = _state(node, job_id)
    assert job.attempts == 2 and job.error == ""
    assert any("prior query failed" in n and "last attempt: running without it" in n for n in job.notes), job.notes
    assert list((node.settings.results_dir / str(_study_uid(node))).glob("SR_*.dcm"))
    record_case("fault", "prior query refused (PACS down)", "job re-queued with backoff; last attempt ran "
                "without the prior, other tasks delivered", attempts=2)


def _study_uid(node: NodeContext) -> str:
    with node.store.session() as s:
        return s.scalars(select(Study.study_instance_uid)).one()


def test_a_full_results_disk_is_retried_and_succeeds_once_space_returns(tmp_path):
    node = _node(tmp_path)
    results = node.settings.results_dir
    mount_tmpfs(results, "256k")
    try:
        filler = results / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last block
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        job_id = _job(node, tasks=["report_impression"])
        with pytest.raises(TransientJobError):
            run_job(node, job_id)
        job = _state(node, job_id)
        assert job.state is JobState.QUEUED and "No space left on device" in job.error, job.error
        filler.unlink()
        assert run_job(node, job_id) == "DONE"
        assert _state(node, job_id).attempts == 2
    finally:
        unmount(results)
    record_case("fault", "results disk full while writing a job's objects",
                "job re-queued (transient), done once space returned", attempts=2)


def test_an_unreadable_study_fails_at_once_with_its_reason(tmp_path):
    node = _node(tmp_path)
    job_id = _job(node, payload=b"this is not DICOM", tasks=["report_impression"])
    with pytest.raises(Exception) as raised:
        run_job(node, job_id)
    assert not isinstance(raised.value, TransientJobError)
    job = _state(node, job_id)
    assert job.state is JobState.FAILED and job.attempts == 1
    assert job.error.startswith("InvalidDicomError"), job.error
    # A redelivery of a failed job does nothing (no endless loop on a permanent problem).
    assert run_job(node, job_id) == "FAILED" and _state(node, job_id).attempts == 1
    # Once the cause is fixed, an operator queues it again (`medversa retry JOB`).
    assert requeue_failed_job(node, job_id)
    job = _state(node, job_id)
    assert job.state is JobState.RECEIVED and job.attempts == 0 and "re-queued by an operator" in job.notes[-1]


def test_a_job_whose_worker_was_lost_on_every_attempt_gives_up(tmp_path):
    node = _node(tmp_path)
    job_id = _job(node, tasks=["report_impression"])
    with node.store.session() as s:  # what a worker killed mid-job on its last attempt leaves
        job = s.get(Job, job_id)
        job.state, job.attempts = JobState.RUNNING, 2
    assert run_job(node, job_id) == "FAILED"
    assert _state(node, job_id).error.startswith("gave up after 2 attempt(s)")


def test_backoff_doubles_up_to_its_cap(tmp_path):
    node = NodeContext(load_settings(None, data_dir=tmp_path, jobs={"retry_initial_s": 30, "retry_max_s": 100}))
    assert [retry_delay(node, n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_serve_retries_through_the_queue_until_the_pacs_is_back(tmp_path, tmp_path_factory):
    """The priors' PACS is down when the study arrives; serve's worker re-queues the job with backoff
    (Celery countdown), the PACS comes back, and the next attempt uses the prior."""
    from .node_process import node_config, start_serve, statuses, stop_serve, storescu, wait_for
    from .orthanc import orthanc_server

    port = free_port()
    pacs = orthanc_server(tmp_path_factory, modalities={"medversa": ("MEDVERSA", "127.0.0.1", port)})
    prior = [f.make_cr(32, 32, PatientID="RETRY-2", StudyDate="20230101", StudyTime="080000",
                       StudyDescription="XR CHEST PA")]
    for ds in prior:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        pacs.upload(buffer.getvalue())
    pacs.stop()  # down: connection refused on its DICOM port
    script = tmp_path / "scripted.yaml"
    script.write_text("longitudinal_comparison: The opacity is new since the prior study.\n")
    config = node_config(tmp_path, port, model={"preset": "tiny", "scripted_answers": str(script)},
                         routing=[{"name": "cxr", "series_kind": "chest_radiograph", "tasks": TASKS}],
                         pacs={"peer": str(pacs.peer), "query_timeout_s": 3, "retrieve_timeout_s": 20},
                         jobs={"max_attempts": 4, "retry_initial_s": 2, "retry_max_s": 4})
    log = tmp_path / "serve.log"
    node = start_serve(config, log)
    store = NodeContext(load_settings(config)).store
    try:
        from medversa.benchmarks.peers import wait_port

        wait_port(port, 90)
        current = [f.make_cr(32, 32, PatientID="RETRY-2", StudyDate="20240102", StudyTime="090000")]
        result = storescu(port, *f.write_datasets(current, tmp_path / "current"))
        assert statuses(result) == [0]

        def job() -> Job | None:
            with store.session() as s:
                found = s.scalars(select(Job)).first()
                if found is not None:
                    s.expunge(found)
                return found

        wait_for(lambda: (j := job()) is not None and j.state is JobState.QUEUED and j.attempts >= 1,
                 120, "the job was not re-queued after the refused prior query", log)
        assert "retry in" in job().error
        pacs.start()
        wait_for(lambda: job().state in (JobState.DONE, JobState.FAILED), 120, "the job did not finish", log)
        finished = job()
        assert finished.state is JobState.DONE and finished.attempts >= 2, (finished.error, finished.notes)
        assert any("used for the comparison" in n or "prior study" in n and "retrieved" in n
                   for n in finished.notes), finished.notes
        assert "will be tried again in" in log.read_text()
    finally:
        stop_serve(node)
        pacs.stop(kill=True)
    record_case("fault", "PACS down during the prior fetch, back later", "serve re-queued the job (Celery "
                "countdown) and the next attempt used the prior", attempts=finished.attempts,
                waited_s=round((finished.finished_at - finished.created_at).total_seconds(), 1))



def test_a_failed_jobs_error_and_the_exception_the_queue_logs_carry_no_patient_identifier(tmp_path, monkeypatch,
                                                                                           caplog):
    """A library error that quotes a header value (as pydicom's and pynetdicom's do) is scrubbed on the
    worker too: in the job's recorded error, in its log lines and in the exception Celery logs."""
    node = _node(tmp_path)
    ds = f.make_cr(32, 32, PatientID="PHI-98765", PatientName="Hostile^Quentin", StudyDate="20240102")
    job_id = _job(node, datasets=[ds], tasks=["report_impression"])

    def broken(*args, **kwargs):
        raise ValueError("cannot decode (0010,0010) 'Hostile^Quentin' of patient PHI-98765")

    monkeypatch.setattr("medversa.node.pipeline.analyze_study", broken)
    with pytest.raises(JobFailedError) as raised:
        run_job(node, job_id)
    job = _state(node, job_id)
    assert job.state is JobState.FAILED and job.error.startswith("ValueError: cannot decode"), job.error
    texts = [job.error, str(raised.value), *(r.getMessage() for r in caplog.records)]
    for text in texts:
        assert "Hostile" not in text and "Quentin" not in text and "PHI-98765" not in text, text
    assert "[patient identifier" in job.error
    # The original exception (and its message) is not chained: Celery's traceback cannot show it.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
