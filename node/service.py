"""``medversa serve``: the SCP, the scheduler (completion, queueing, exports), HTTP, and
in the embedded default a Celery worker process it starts and stops itself."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from sqlalchemy import func, select

from .completion import queue_due_studies
from .job_states import move_job
from .job_store import Job, JobState
from .jobs import deliver_due
from .monitoring import start_http
from .node_context import NodeContext
from .queue import enqueue_with, make_celery
from .retention import apply_retention
from .scp import StorageSCP, record_spooled_files
from .settings import NodeSettings

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class PortUnavailable(RuntimeError):
    """A listening port the node needs cannot be bound (another process has it, or no permission)."""


def _bind(what: str, setting: str, bind: str, port: int, start: Callable[[], T]) -> T:
    """Run ``start`` (which binds ``bind:port``); an OS refusal becomes a message an operator can act on."""
    try:
        return start()
    except OSError as exc:
        raise PortUnavailable(
            f"cannot listen for {what} on {bind}:{port} ({exc.strerror or exc}): another process may hold the "
            f"port; stop it or set {setting} (environment MEDVERSA_{setting.upper().replace('.', '__')})") from exc


def recover_spool(ctx: NodeContext) -> int:
    """After a crash: drop partial files, record spooled files whose rows were not written."""
    removed = ctx.spool.remove_partials()
    if removed:
        LOGGER.warning("removed %d partial spool file(s) left by a crash", removed)
    recovered = record_spooled_files(ctx.store, ctx.spool)
    if recovered:
        LOGGER.warning("recorded %d spooled instance(s) that had no row (crash after the write)", recovered)
    return recovered


class Node:
    def __init__(self, settings: NodeSettings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.ctx = NodeContext(settings)
        self.app = make_celery(settings)
        self.enqueue = enqueue_with(self.app)
        self.scp = StorageSCP(settings, self.ctx.store, self.ctx.spool, self.ctx.metrics)
        self.worker: subprocess.Popen | None = None
        self.http = None
        self._stop = threading.Event()

    def health(self) -> dict:
        report = {"scp": self.scp._server is not None, "disk_fill": round(self.ctx.spool.disk_fill(), 3)}
        try:
            with self.ctx.store.session() as s:
                s.scalar(select(func.count()).select_from(Job))
            report["database"] = True
        except Exception:  # noqa: BLE001
            report["database"] = False
        if self.settings.embedded:
            report["worker"] = self.worker is not None and self.worker.poll() is None
        # Spooled instances whose job-store rows wait for the store (its disk full): nonzero is not ok.
        waiting = self.scp.recorder.waiting
        report["ok"] = all(v for k, v in report.items() if k != "disk_fill") and not waiting
        report["rows_waiting"] = waiting
        return report

    def requeue_interrupted_jobs(self, why: str) -> int:
        """Embedded mode: jobs RUNNING when the only worker died go back to the queue.

        The SQLite transport does not redeliver a message whose consumer died, so the job rows
        decide; a re-run is idempotent (same result UIDs, unique export rows).
        """
        with self.ctx.store.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.state == JobState.RUNNING)))
            for job in jobs:
                move_job(job, JobState.RECEIVED, reason=why)
                job.notes = list(job.notes or []) + [f"re-queued: {why}"]
                self.ctx.store.audit("job", "requeued", session=s, study_instance_uid=job.study.study_instance_uid,
                                     detail=f"job {job.id}: {why}")
        if jobs:
            LOGGER.warning("%d interrupted job(s) queued again (%s)", len(jobs), why)
        return len(jobs)

    def start(self) -> None:
        recover_spool(self.ctx)
        if self.settings.embedded:
            self.requeue_interrupted_jobs("the node restarted while they ran")
        scp, http = self.settings.scp, self.settings.http
        _bind("DICOM (the SCP)", "scp.port", scp.bind, scp.port, self.scp.start)
        if http.enabled:
            try:
                self.http = _bind("metrics and health (HTTP)", "http.port", http.bind, http.port,
                                  lambda: start_http(http.bind, http.port, self.ctx.metrics, self.health))
            except PortUnavailable:
                self.scp.stop()  # nothing half-started stays listening
                raise
        if self.settings.embedded:
            self._start_worker()

    def _start_worker(self) -> None:
        effective = self.settings.data_dir / "effective-config.yaml"
        data = self.settings.model_dump(mode="json")
        env = dict(os.environ)
        # Secrets travel in the child's environment, never in a file.
        for key in ("broker_url", "database_url"):
            value = data.pop(key, None)
            if value:
                env[f"MEDVERSA_{key.upper()}"] = value
        effective.write_text(yaml.safe_dump(data, sort_keys=False))
        effective.chmod(0o600)
        cmd = [sys.executable, "-m", "medversa.cli", "worker", "--config", str(effective),
               "--queues", self.settings.model.queue]
        self.worker = subprocess.Popen(cmd, env=env)
        LOGGER.info("embedded worker started (pid %d) on queue %s", self.worker.pid, self.settings.model.queue)

    def tick(self) -> None:
        queue_due_studies(self.ctx, self.enqueue)
        deliver_due(self.ctx)
        apply_retention(self.ctx)
        with self.ctx.store.session() as s:
            for state in JobState:
                count = s.scalar(select(func.count()).select_from(Job).where(Job.state == state)) or 0
                self.ctx.metrics.jobs.labels(state.value).set(count)

    def run(self, interval: float = 1.0) -> None:
        self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - the scheduler must keep running
                    LOGGER.exception("scheduler tick failed")
                if self.worker is not None and self.worker.poll() is not None:
                    LOGGER.error("embedded worker exited (%s); restarting it", self.worker.returncode)
                    self.requeue_interrupted_jobs(f"the worker died (exit {self.worker.returncode})")
                    self._start_worker()
                self._stop.wait(interval)
        finally:
            self.stop()

    def stop(self) -> None:
        LOGGER.info("stopping")
        self.scp.stop()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()  # shutdown() only ends the loop; the listening socket stays open


def run_worker(settings: NodeSettings, queues: list[str]) -> None:
    """A Celery worker process: solo pool (one job at a time; the model loads once per process)."""
    app = make_celery(settings)
    argv = ["worker", "--pool=solo", "--concurrency=1", "-Q", ",".join(queues), "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"medversa-{os.getpid()}@%h"]
    app.worker_main(argv)
