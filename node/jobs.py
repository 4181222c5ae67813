"""Jobs: create a version when a study is complete, run it (idempotently), record its exports.

``run_job(job_id)`` re-reads the job and checks its state, so a redelivered task
(acks late, a worker killed mid-job) simply runs again: result UIDs derive from the
study and the model, so a re-run writes the same objects, and export rows are
unique per (job, object, destination), so nothing is stored twice. Every state change goes
through :mod:`medversa.node.job_states`; the sender (:mod:`medversa.node.export`) returns outcomes
that :func:`apply_export_outcomes` records here.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from sqlalchemy import select

from medversa.inference import Task, context_fields_from

from .export import CLAIM_LEASE_S, ClaimedExport, ExportOutcome, claim_due, next_try, send
from .job_failures import JobFailedError, TransientJobError, is_transient, retry_delay
from .job_states import FINISHED_JOB_STATES, move_job, move_study_state
from .job_store import (
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    Study,
    StudyState,
    utcnow,
)
from .node_context import NodeContext
from .phi import identifiers_in_file, identifiers_scope, phi, scrub
from .result_files import write_atomic

if TYPE_CHECKING:
    from medversa.dicom_mapping import StudyOptions

LOGGER = logging.getLogger(__name__)


def create_job_version(ctx: NodeContext, study_id: int, tasks: list[str], notes: list[str],
                       questions: list[str] | None = None) -> int:
    """A new job version for the study; earlier unfinished versions are superseded."""
    with ctx.store.session() as s:
        study = s.get(Study, study_id)
        assert study is not None
        version = 1
        for job in study.jobs:
            version = max(version, job.version + 1)
            if job.state in (JobState.RECEIVED, JobState.QUEUED) and job.ask is None:  # asks stay (node/ask.py)
                move_job(job, JobState.SUPERSEDED, reason=f"version {version} created")
        job = Job(study_id=study.id, version=version, tasks=tasks, queue=ctx.settings.model.queue,
                  state=JobState.RECEIVED, notes=notes, questions=list(questions or []))
        s.add(job)
        move_study_state(study, StudyState.QUEUED, reason=f"job version {version}")
        study.pending_instances = 0
        s.flush()
        job_id = job.id
    LOGGER.info("study %s: job %d version %d created (%s)", study_id, job_id, version, ", ".join(tasks))
    return job_id


def _study_files(ctx: NodeContext, study_id: int) -> list[Path]:
    with ctx.store.session() as s:
        return [Path(p) for p in s.scalars(select(Instance.path).where(Instance.study_id == study_id))]


def run_job(ctx: NodeContext, job_id: int) -> str:
    """Run one job version; returns its final state.

    A transient failure (:func:`is_transient`; a PACS that did not answer for the prior) puts the
    job back to QUEUED and raises :class:`TransientJobError` with the backoff delay, until
    ``jobs.max_attempts``; the last attempt runs without the prior rather than failing. Any other
    failure marks the job FAILED at once, with the reason, and re-raises.
    """
    max_attempts = ctx.settings.jobs.max_attempts
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        if job.state in FINISHED_JOB_STATES:
            LOGGER.info("job %d is %s: nothing to do (redelivery)", job_id, job.state.value)
            return job.state.value
        compute = job.state is not JobState.EXPORTING
        if compute and job.attempts >= max_attempts:
            # Redelivered after every attempt was used: a worker lost each time (killed, out of memory).
            move_job(job, JobState.FAILED, reason="attempts used up")
            job.error = (f"gave up after {job.attempts} attempt(s); the last one did not finish "
                         f"(worker lost?) {job.error}").strip()[:2000]
            LOGGER.error("job %d: %s", job_id, job.error)
            return job.state.value
        if compute:
            move_job(job, JobState.RUNNING, reason=f"attempt {job.attempts + 1}")
            job.attempts += 1
            job.started_at = utcnow()
        attempt = job.attempts
        study_id = job.study_id
    if compute:
        with identifiers_scope(_patient_identifiers(ctx, study_id)):
            _compute_attempt(ctx, job_id, attempt, max_attempts)
    deliver_due(ctx, job_id=job_id)
    return finish_if_delivered(ctx, job_id)


def _patient_identifiers(ctx: NodeContext, study_id: int) -> tuple[str, ...]:
    """The identifiers in the study's spooled headers (a study may mix spellings of one name)."""
    found: list[str] = []
    for path in _study_files(ctx, study_id)[:_IDENTIFIER_FILES]:
        found.extend(identifiers_in_file(path))
    return tuple(dict.fromkeys(found))


#: Headers read for the identifiers to scrub from a job's error: a study's instances share them.
_IDENTIFIER_FILES = 8


def _compute_attempt(ctx: NodeContext, job_id: int, attempt: int, max_attempts: int) -> None:
    """One attempt, with the identifiers in scope so that the job's error, its log lines and the
    exception the queue sees (and logs with its traceback) carry none of them."""
    try:
        _compute(ctx, job_id, last_attempt=attempt >= max_attempts)
    except Exception as exc:
        transient = is_transient(exc) and attempt < max_attempts
        with ctx.store.session() as s:
            job = ctx.store.job(s, job_id)
            reason = f"{type(exc).__name__}: {scrub(str(exc))}"
            if transient:
                delay = retry_delay(ctx, attempt)
                move_job(job, JobState.QUEUED, reason="transient failure")
                job.error = f"attempt {attempt} of {max_attempts} failed, retry in {delay:.0f} s: {reason}"[:2000]
            else:
                move_job(job, JobState.FAILED, reason="failure")
                job.error = reason[:2000] if attempt < max_attempts or not is_transient(exc) else \
                    f"gave up after {attempt} attempt(s): {reason}"[:2000]
        if transient:
            LOGGER.warning("job %d: %s", job_id, job.error)
            raise TransientJobError(job.error, retry_in=delay) from None
        ctx.metrics.job_failures.inc()
        LOGGER.error("job %d failed: %s", job_id, job.error)
        raise JobFailedError(f"job {job_id}: {job.error}") from None


def pipeline_options(ctx: NodeContext, tasks: tuple[Task, ...], questions: tuple[str, ...],
                     study_uid: str) -> StudyOptions:
    """What the worker runs on a study: the routed tasks, as far as the checkpoint declares them."""
    from medversa.dicom_mapping import StudyOptions  # the worker's, not serve's start-up

    declaration = ctx.analyzer.declaration
    override = ctx.settings.model.context_fields
    return StudyOptions(
        algorithm=ctx.algorithm, tasks=tasks, presentation_states=ctx.settings.presentation_states,
        burned_in=ctx.settings.burned_in, key_objects=ctx.settings.key_objects,
        not_analysed_notice=ctx.settings.not_analysed_notice,
        context_fields=context_fields_from(override) if override is not None else declaration.context_fields,
        declared_tasks=declaration.tasks, prior_details=declaration.prior_details, questions=questions,
        views_per_request=declaration.views_per_request,
        # Stable across job versions: a later version's objects replace the earlier ones.
        job_key=f"{study_uid}:{ctx.algorithm.model_id}",
    )


def _compute(ctx: NodeContext, job_id: int, last_attempt: bool) -> None:
    """Read the study, fetch its prior, run the model, write the objects and their export rows."""
    from .pipeline import analyze_study
    from .priors import fetch_prior

    started = time.perf_counter()
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        study_id, study_uid = job.study_id, job.study.study_instance_uid
        tasks = tuple(Task(t) for t in job.tasks)
        questions = tuple(job.questions or ())
        is_ask = job.ask is not None
    if is_ask:  # a reader's question or a region (node/ask.py): answered on its own image only
        # Imported here, not at the top: node/ask.py pulls in highdicom's SR builders, which `serve`
        # (it imports this module) would otherwise load at start-up for no study.
        from .ask import compute_ask

        return compute_ask(ctx, job_id, last_attempt)
    datasets = [pydicom.dcmread(p) for p in _study_files(ctx, study_id)]
    if datasets:
        first = datasets[0]
        LOGGER.info("job %d: study %s, patient %s %s, accession %s: %d instance(s)", job_id, study_uid,
                    phi(first.get("PatientID", "")), phi(first.get("PatientName", "")),
                    phi(first.get("AccessionNumber", "")), len(datasets))
    options = pipeline_options(ctx, tasks, questions, study_uid)
    notes: list[str] = []
    prior = None
    if Task.LONGITUDINAL_COMPARISON in tasks and options.declared_tasks is not None \
            and Task.LONGITUDINAL_COMPARISON in options.declared_tasks:
        fetched = fetch_prior(ctx, datasets)  # never raises; retryable: the PACS did not answer
        if fetched.retryable and not last_attempt:
            raise TransientJobError(f"prior study: {fetched.note}")
        prior = fetched.datasets
        if fetched.note:
            notes.append(fetched.note + (" (last attempt: running without it)" if fetched.retryable else ""))
    output = analyze_study(datasets, ctx.analyzer, options, prior, choose_for=ctx.choose_for)
    notes.extend(output.notes)
    folder = ctx.settings.results_dir / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        for obj in output.objects:
            path = folder / f"{obj.kind}_{obj.dataset.SOPInstanceUID}.dcm"
            write_atomic(obj.dataset, path)
            for dest in ctx.settings.export.destinations:
                exists = s.scalars(select(Export).where(
                    Export.job_id == job_id, Export.sop_instance_uid == str(obj.dataset.SOPInstanceUID),
                    Export.destination == str(dest))).first()
                if exists is None:
                    s.add(Export(job_id=job_id, sop_instance_uid=str(obj.dataset.SOPInstanceUID),
                                 kind=obj.kind, path=str(path), destination=str(dest)))
        job.notes = list(job.notes or []) + notes
        move_job(job, JobState.EXPORTING, reason="results written")
        job.finished_at = utcnow()
        job.error = ""
    ctx.metrics.processing.observe(time.perf_counter() - started)
    LOGGER.info("job %d: %d object(s) written in %.1f s", job_id, len(output.objects), time.perf_counter() - started)


def requeue_failed_job(ctx: NodeContext, job_id: int) -> bool:
    """Give a FAILED job a fresh set of attempts (after the cause was fixed); False if it is not FAILED.

    The job goes back to RECEIVED; ``serve``'s scheduler queues it on its next round.
    """
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        if job.state is not JobState.FAILED:
            return False
        job.notes = list(job.notes or []) + [f"re-queued by an operator after: {job.error}"[:500]]
        move_job(job, JobState.RECEIVED, reason="re-queued by an operator")
        job.attempts, job.error = 0, ""
    LOGGER.info("job %d re-queued by an operator", job_id)
    return True


def finish_if_delivered(ctx: NodeContext, job_id: int) -> str:
    """An EXPORTING job whose exports are all delivered is DONE (and its study, unless it is an ask)."""
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        states = [e.state for e in job.exports]
        if job.state is JobState.EXPORTING and all(st is ExportState.DELIVERED for st in states):
            move_job(job, JobState.DONE, reason="every export delivered")
            if job.study.state is StudyState.QUEUED and job.ask is None:
                move_study_state(job.study, StudyState.DONE, reason=f"job {job_id} done")
        return job.state.value


def deliver_due(ctx: NodeContext, job_id: int | None = None, now: dt.datetime | None = None) -> int:
    """Send every due export (of one job, or all); returns how many were delivered."""
    return deliver_claimed(ctx, claim_due(ctx, job_id, now or utcnow()))


def deliver_claimed(ctx: NodeContext, claimed: list[ClaimedExport]) -> int:
    """Send exports this caller has claimed (:func:`claim_due`, :func:`retry_job_exports`), record
    the outcomes and finish the jobs whose exports are all delivered; returns how many were delivered."""
    delivered = apply_export_outcomes(ctx, send(ctx, claimed))
    for job_id in dict.fromkeys(row.job_id for row in claimed):
        finish_if_delivered(ctx, job_id)
    return delivered


def apply_export_outcomes(ctx: NodeContext, outcomes: list[ExportOutcome]) -> int:
    """Record each try on its export row: DELIVERED (audited), or the next try's time, or DEAD
    (dead-letter, audited) by :func:`medversa.node.export.next_try`; returns how many were delivered."""
    settings = ctx.settings.export
    delivered = 0
    now = utcnow()
    with ctx.store.session() as s:
        for outcome in outcomes:
            export = s.get(Export, outcome.export.export_id)
            destination, message = outcome.export.destination, outcome.status
            export.attempts += 1
            export.last_status = message[:256]
            if outcome.delivered:
                export.state = ExportState.DELIVERED
                export.delivered_at = now
                delivered += 1
                finished = export.job.finished_at or now
                ctx.metrics.export_latency.observe(max((now - finished).total_seconds(), 0.0))
                ctx.store.audit("export", "success", session=s, peer=destination,
                                study_instance_uid=export.job.study.study_instance_uid,
                                sop_instance_uid=export.sop_instance_uid, detail=export.kind)
                continue
            ctx.metrics.export_failures.inc()
            state, retry_at = next_try(export.attempts, settings, now)
            if state is ExportState.DEAD:
                export.state = ExportState.DEAD
                ctx.metrics.dead_letters.inc()
                LOGGER.error("export %d of %s to %s: dead-letter after %d tries (%s)", export.id,
                             export.sop_instance_uid, destination, export.attempts, message)
                ctx.store.audit("export", "dead-letter", session=s, peer=destination,
                                sop_instance_uid=export.sop_instance_uid, detail=message[:500])
            else:
                export.next_attempt_at = retry_at
                LOGGER.warning("export %d to %s failed (try %d): %s; next try in %.0f s", export.id,
                               destination, export.attempts, message, (retry_at - now).total_seconds())
    return delivered


def retry_job_exports(ctx: NodeContext, job_id: int) -> list[ClaimedExport]:
    """Revive a job's dead or pending exports, claimed for the caller's immediate try
    (:func:`deliver_claimed`); returns the claimed rows.

    A FAILED job is put back to RECEIVED instead (no rows): the scheduler queues it again.
    """
    with ctx.store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state is JobState.FAILED:
            move_job(job, JobState.RECEIVED, reason="medversa retry")
            job.error = ""
            ctx.store.audit("retry", "success", session=s, detail=f"job {job_id}: failed job queued again")
            return []
        revived = []
        lease = utcnow() + dt.timedelta(seconds=CLAIM_LEASE_S)
        for export in job.exports:
            if export.state in (ExportState.DEAD, ExportState.PENDING):
                export.state = ExportState.PENDING
                export.attempts = 0
                # Claimed for the caller, as claim_due would: serve's scheduler must not send it meanwhile.
                export.next_attempt_at = lease
                revived.append(ClaimedExport.of(export))
        if revived and job.state is JobState.DONE:
            move_job(job, JobState.EXPORTING, reason="medversa retry revived its exports")
        ctx.store.audit("retry", "success", session=s, detail=f"job {job_id}: {len(revived)} export(s) revived")
    return revived
