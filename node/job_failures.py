"""Which job failures pass by themselves, and how long to wait before the next attempt.

Shared by the study jobs (:mod:`.jobs`) and the reader's questions (:mod:`.ask`), which both
raise :class:`TransientJobError` for a PACS, database or disk that is not there right now.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .export import backoff_s

if TYPE_CHECKING:
    from .node_context import NodeContext


class JobFailedError(RuntimeError):
    """A job failed for good; the message is the job's recorded error, patient identifiers scrubbed.

    Raised in place of the original exception (whose message and traceback may quote a patient's
    name or ID read from a header) so that the queue's own logging of the failure carries no PHI.
    """


class TransientJobError(RuntimeError):
    """A failure worth another try later (PACS or database unreachable, disk momentarily full, worker
    lost): the job goes back to QUEUED and the queue runs it again after ``retry_in`` seconds."""

    def __init__(self, message: str, retry_in: float = 0.0) -> None:
        super().__init__(message)
        self.retry_in = retry_in


#: OS errors that pass (disk full, I/O hiccup, a peer or the network not there right now).
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ECONNREFUSED,
                               errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself: retry later. Everything else (unreadable input, a model
    error on this input, a bug) fails the job at once with its reason."""
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, TransientJobError | TimeoutError | ConnectionError | OperationalError):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def retry_delay(ctx: NodeContext, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``jobs.retry_initial_s``, capped
    (the exports' backoff, with the jobs' settings)."""
    jobs = ctx.settings.jobs
    return backoff_s(attempt, jobs.retry_initial_s, jobs.retry_max_s)
