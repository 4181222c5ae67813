"""The Celery application: one task per job, ``analyze_study(job_id)``.

Acks late with reject-on-worker-lost, so a job whose worker dies is redelivered; the
task re-reads the job and checks its state (idempotent). Transient errors
(:func:`medversa.node.jobs.is_transient`) put the job back to QUEUED and retry it with
exponential backoff up to ``jobs.max_attempts``; other errors fail the job at once (the state
moves: :mod:`medversa.node.job_states`). Queues are per model, so a GPU host consumes only the
models it holds. Embedded default broker: Kombu's SQLAlchemy transport on an SQLite file in the
data folder (no Redis); production: a Redis URL.
"""

from __future__ import annotations

import logging

from celery import Celery

from .settings import NodeSettings

LOGGER = logging.getLogger(__name__)

TASK_NAME = "medversa.analyze_study"
_CONTEXTS: dict[str, object] = {}


def broker_url(settings: NodeSettings) -> str:
    if settings.broker_url:
        return settings.broker_url
    return f"sqla+sqlite:///{(settings.data_dir / 'broker.sqlite').resolve()}"


def make_celery(settings: NodeSettings) -> Celery:
    app = Celery("medversa", broker=broker_url(settings), set_as_current=True)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.model.queue,
        broker_connection_retry_on_startup=True,
        # Redis: redeliver an unacknowledged job after an hour (a long 7B job must not run twice).
        broker_transport_options={"visibility_timeout": 3600} if settings.broker_url else {},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )

    # Retries are counted in the job store (jobs.max_attempts), not by Celery: a redelivered task
    # after a lost worker counts as an attempt too.
    @app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True)
    def analyze_study(self, job_id: int) -> str:
        from .jobs import TransientJobError, run_job
        from .node_context import NodeContext

        ctx = _CONTEXTS.get("node")
        if ctx is None:
            ctx = _CONTEXTS["node"] = NodeContext(settings)
        try:
            return run_job(ctx, job_id)  # type: ignore[arg-type]
        except TransientJobError as exc:
            LOGGER.warning("job %s will be tried again in %.0f s", job_id, exc.retry_in)
            raise self.retry(exc=exc, countdown=exc.retry_in) from exc

    return app


def enqueue_with(app: Celery):
    """An ``enqueue(job_id, queue)`` that sends the task (raises if the broker is down)."""

    def enqueue(job_id: int, queue: str) -> None:
        app.send_task(TASK_NAME, args=[job_id], queue=queue, retry=False)

    return enqueue
