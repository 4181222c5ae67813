"""The job and study state machines: one transition table each, one function that moves a row.

Every module that changes a job's (or a study's) state calls :func:`move_job` (:func:`move_study_state`),
so the tables below are the whole truth about which moves are legal; a move they do not list raises
:class:`IllegalTransition` and the transaction it runs in rolls back.

A job's usual way is RECEIVED -> QUEUED -> RUNNING -> EXPORTING -> DONE. A transient failure
sends a RUNNING job back to QUEUED (retried with backoff); any other failure, or the last attempt,
ends it FAILED until ``medversa retry`` puts it back to RECEIVED; a newer version of the study's
job supersedes one that has not started yet (SUPERSEDED, the only end).

Ask jobs (node/ask.py: a reader's question or region) share the table: they are created RECEIVED
(annotations) or QUEUED (``medversa ask`` runs its job at once) and never become SUPERSEDED.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .job_store import Job, JobState, Study, StudyState

LOGGER = logging.getLogger(__name__)

_J = JobState
#: Which states a job may move to from each state (the key itself only where listed: a redelivery).
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # Created; queued by the scheduler, or run by a worker that got the task before the scheduler
    # recorded the enqueue; superseded by a newer version; failed when its attempts were used up.
    # -> EXPORTING: an embedded worker that outlived its `serve` finishes the job after the restarted
    # `serve` queued it again (RUNNING -> RECEIVED at start-up); its results stand, as they did before.
    _J.RECEIVED: frozenset({_J.QUEUED, _J.RUNNING, _J.SUPERSEDED, _J.FAILED, _J.EXPORTING}),
    _J.QUEUED: frozenset({_J.RUNNING, _J.SUPERSEDED, _J.FAILED, _J.EXPORTING}),
    # RUNNING -> RUNNING: a task redelivered after its worker was lost runs the job again (idempotent).
    # RUNNING -> RECEIVED: the embedded worker died with it (the service queues it again at start-up).
    _J.RUNNING: frozenset({_J.RUNNING, _J.EXPORTING, _J.QUEUED, _J.FAILED, _J.RECEIVED}),
    # Results written, exports pending. A failure after the results were recorded ends the attempt
    # as any other does (QUEUED to retry, FAILED).
    _J.EXPORTING: frozenset({_J.DONE, _J.QUEUED, _J.FAILED}),
    _J.DONE: frozenset({_J.EXPORTING}),  # `medversa retry` revived an export
    _J.FAILED: frozenset({_J.RECEIVED}),  # `medversa retry`: a fresh set of attempts
    _J.SUPERSEDED: frozenset(),
}

#: States a job row may be created in (an ask from ``medversa ask`` is run at once: QUEUED).
INITIAL_JOB_STATES: frozenset[JobState] = frozenset({_J.RECEIVED, _J.QUEUED})

#: States in which a job is finished: a redelivered task has nothing to do.
FINISHED_JOB_STATES: frozenset[JobState] = frozenset({_J.DONE, _J.SUPERSEDED, _J.FAILED})

_S = StudyState
#: Which states a study may move to from each state.
STUDY_TRANSITIONS: Mapping[StudyState, frozenset[StudyState]] = {
    # Complete: a job version is created (QUEUED), or no routing rule matched (DONE); a prior's
    # files may go by retention (PURGED).
    _S.RECEIVING: frozenset({_S.QUEUED, _S.DONE, _S.PURGED}),
    # QUEUED -> QUEUED: a newer job version replaced the one queued; RECEIVING: new instances arrived.
    _S.QUEUED: frozenset({_S.QUEUED, _S.DONE, _S.RECEIVING, _S.PURGED}),
    _S.DONE: frozenset({_S.QUEUED, _S.RECEIVING, _S.PURGED}),
    _S.PURGED: frozenset({_S.DONE}),  # a purged study's files came back with a retrieve
}


class IllegalTransition(ValueError):
    """A move the transition table does not allow; names the row, both states and why it was tried."""

    def __init__(self, what: str, row_id: int | None, current: str, to: str, reason: str) -> None:
        because = f" ({reason})" if reason else ""
        super().__init__(f"{what} {row_id}: illegal move {current} -> {to}{because}")
        self.current, self.to = current, to


def can_move_job(current: JobState, to: JobState) -> bool:
    return to in JOB_TRANSITIONS[current]


def move_job(job: Job, to: JobState, *, reason: str = "") -> None:
    """Move ``job`` to ``to`` (inside the caller's session), or raise :class:`IllegalTransition`."""
    current = JobState(job.state)
    if not can_move_job(current, to):
        raise IllegalTransition("job", job.id, current.value, to.value, reason)
    job.state = to
    LOGGER.debug("job %s: %s -> %s%s", job.id, current.value, to.value, f" ({reason})" if reason else "")


def move_study_state(study: Study, to: StudyState, *, reason: str = "") -> None:
    """Move ``study`` to ``to`` (inside the caller's session), or raise :class:`IllegalTransition`."""
    current = StudyState(study.state)
    if to not in STUDY_TRANSITIONS[current]:
        raise IllegalTransition("study", study.id, current.value, to.value, reason)
    study.state = to
    LOGGER.debug("study %s: %s -> %s%s", study.id, current.value, to.value, f" ({reason})" if reason else "")
