"""Jobs: create a version when a study is complete, run it (idempotently), record its exports.

``run_job(job_id)`` re-reads the job and checks its state, so a redelivered task
(acks late, a worker killed mid-job) simply runs again: result UIDs derive from the
study and the model, so a re-run writes the same objects, and export rows are
unique per (job, object, destination), so nothing is stored twice.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pydicom
from medversa.inference.tasks import Task
from sqlalchemy import select

from .context import NodeContext
from .phi import phi
from .store import (
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    Study,
    StudyState,
    utcnow,
)

LOGGER = logging.getLogger(__name__)


class TransientJobError(RuntimeError):
    """A failure worth retrying (network, PACS unavailable): Celery retries with backoff."""


def create_job_version(ctx: NodeContext, study_id: int, tasks: list[str], notes: list[str]) -> int:
    """A new job version for the study; earlier unfinished versions are superseded."""
    with ctx.store.session() as s:
        study = s.get(Study, study_id)
        assert study is not None
        version = 1
        for job in study.jobs:
            version = max(version, job.version + 1)
            if job.state in (JobState.RECEIVED, JobState.QUEUED):
                job.state = JobState.SUPERSEDED
        job = Job(study_id=study.id, version=version, tasks=tasks, queue=ctx.settings.model.queue,
                  state=JobState.RECEIVED, notes=notes)
        s.add(job)
        study.state = StudyState.QUEUED
        study.pending_instances = 0
        s.flush()
        job_id = job.id
    LOGGER.info("study %s: job %d version %d created (%s)", study_id, job_id, version, ", ".join(tasks))
    return job_id


def _study_files(ctx: NodeContext, study_id: int) -> list[Path]:
    with ctx.store.session() as s:
        return [Path(p) for p in s.scalars(select(Instance.path).where(Instance.study_id == study_id))]


def _write_atomic(ds, path: Path) -> None:
    temp = path.with_name(f".{path.name}.partial")
    ds.save_as(temp, enforce_file_format=True)
    with open(temp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(temp, path)


def run_job(ctx: NodeContext, job_id: int) -> str:
    """Run one job version; returns its final state."""
    from .export import deliver_due
    from .pipeline import PipelineOptions, analyze_study
    from .priors import fetch_prior

    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        if job.state in (JobState.DONE, JobState.SUPERSEDED):
            LOGGER.info("job %d is %s: nothing to do (redelivery)", job_id, job.state.value)
            return job.state.value
        if job.state is JobState.EXPORTING:
            compute = False
        else:
            compute = True
            job.state = JobState.RUNNING
            job.attempts += 1
            job.started_at = utcnow()
        study_id, study_uid = job.study_id, job.study.study_instance_uid
        tasks = tuple(Task(t) for t in job.tasks)
    if compute:
        started = time.perf_counter()
        try:
            datasets = [pydicom.dcmread(p) for p in _study_files(ctx, study_id)]
            if datasets:
                first = datasets[0]
                LOGGER.info("job %d: study %s, patient %s %s, accession %s: %d instance(s)", job_id, study_uid,
                            phi(first.get("PatientID", "")), phi(first.get("PatientName", "")),
                            phi(first.get("AccessionNumber", "")), len(datasets))
            notes: list[str] = []
            prior = None
            if Task.LONGITUDINAL_COMPARISON in tasks:
                fetched = fetch_prior(ctx, datasets)  # never raises; retryable: the PACS did not answer
                prior = fetched.datasets
                if fetched.note:
                    notes.append(fetched.note)
            options = PipelineOptions(
                algorithm=ctx.algorithm, tasks=tasks, presentation_states=ctx.settings.presentation_states,
                burned_in=ctx.settings.burned_in, key_objects=ctx.settings.key_objects,
                # Stable across job versions: a later version's objects replace the earlier ones.
                job_key=f"{study_uid}:{ctx.algorithm.model_id}",
            )
            output = analyze_study(datasets, ctx.analyzer, options, prior, choose_for=ctx.choose_for)
            notes.extend(output.notes)
            folder = ctx.settings.results_dir / study_uid
            folder.mkdir(parents=True, exist_ok=True)
            with ctx.store.session() as s:
                job = ctx.store.job(s, job_id)
                for obj in output.objects:
                    path = folder / f"{obj.kind}_{obj.dataset.SOPInstanceUID}.dcm"
                    _write_atomic(obj.dataset, path)
                    for dest in ctx.settings.export.destinations:
                        exists = s.scalars(select(Export).where(
                            Export.job_id == job_id, Export.sop_instance_uid == str(obj.dataset.SOPInstanceUID),
                            Export.destination == str(dest))).first()
                        if exists is None:
                            s.add(Export(job_id=job_id, sop_instance_uid=str(obj.dataset.SOPInstanceUID),
                                         kind=obj.kind, path=str(path), destination=str(dest)))
                job.notes = list(job.notes or []) + notes
                job.state = JobState.EXPORTING
                job.finished_at = utcnow()
                job.error = ""
            ctx.metrics.processing.observe(time.perf_counter() - started)
            LOGGER.info("job %d: %d object(s) written in %.1f s", job_id, len(output.objects),
                        time.perf_counter() - started)
        except Exception as exc:
            with ctx.store.session() as s:
                job = ctx.store.job(s, job_id)
                job.state = JobState.FAILED
                job.error = f"{type(exc).__name__}: {exc}"[:2000]
            ctx.metrics.job_failures.inc()
            LOGGER.exception("job %d failed", job_id)
            raise
    deliver_due(ctx, job_id=job_id)
    return finish_if_delivered(ctx, job_id)


def finish_if_delivered(ctx: NodeContext, job_id: int) -> str:
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        states = [e.state for e in job.exports]
        if job.state is JobState.EXPORTING and all(st is ExportState.DELIVERED for st in states):
            job.state = JobState.DONE
            if job.study.state is StudyState.QUEUED:
                job.study.state = StudyState.DONE
        return job.state.value
