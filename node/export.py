"""Exports: C-STORE results to every destination, persisted, retried with backoff, dead-lettered.

Every (object, destination) pair is a row. A due row is sent; success marks it
DELIVERED; a failure schedules the next try after ``initial * 2**(tries-1)``
seconds (capped), which survives restarts because it is a column, not a timer.
After ``max_attempts`` the row goes to DEAD (audited) until ``medversa retry``.
Concurrent senders (the scheduler, a worker finishing a job) claim due rows first, so each
try happens once. Each destination's ``tls`` block (PS3.15 B.1) applies to its associations; an association
that cannot be made (a plain connection to a TLS-only peer included) leaves the rows pending
with the reason in ``last_status`` and in the log.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from pathlib import Path

from sqlalchemy import select, update

from .config import Peer
from .context import NodeContext
from .store import Export, ExportState, Job, JobState, utcnow

LOGGER = logging.getLogger(__name__)


def backoff_s(attempts: int, initial: float, maximum: float) -> float:
    return min(maximum, initial * 2 ** max(attempts - 1, 0))


def destination_peer(ctx: NodeContext, destination: str) -> Peer:
    """The configured destination an export row names (``AE@HOST:PORT``), with its TLS settings.

    A row whose destination has left the configuration is still tried, over a plain
    association (no TLS settings remain for it).
    """
    for peer in ctx.settings.export.destinations:
        if str(peer) == destination:
            return peer
    return Peer.parse(destination)


#: How long a claimed export is left to the sender that claimed it before another may try it.
CLAIM_LEASE_S = 600.0


def _claim_due(ctx: NodeContext, job_id: int | None, now: dt.datetime) -> list[tuple]:
    """The due exports this caller may send, claimed so no concurrent caller sends them too.

    ``serve``'s scheduler and a worker finishing a job both call :func:`deliver_due`; each due row
    is taken by a conditional UPDATE (still pending and due: move ``next_attempt_at`` a lease
    ahead), so exactly one caller gets it and its try is counted once. A sender that dies leaves
    the row to be tried again when the lease runs out.
    """
    with ctx.store.session() as s:
        query = select(Export).where(Export.state == ExportState.PENDING, Export.next_attempt_at <= now)
        if job_id is not None:
            query = query.where(Export.job_id == job_id)
        candidates = [(e.id, e.destination, e.path, e.sop_instance_uid, e.job_id) for e in s.scalars(query)]
    lease = now + dt.timedelta(seconds=CLAIM_LEASE_S)
    claimed = []
    with ctx.store.session() as s:
        for row in candidates:
            taken = s.execute(update(Export).where(Export.id == row[0], Export.state == ExportState.PENDING,
                                                   Export.next_attempt_at <= now).values(next_attempt_at=lease))
            if taken.rowcount == 1:
                claimed.append(row)
    return claimed


def deliver_due(ctx: NodeContext, job_id: int | None = None, now: dt.datetime | None = None) -> int:
    """Send every due export (of one job, or all); returns how many were delivered."""
    return deliver_claimed(ctx, _claim_due(ctx, job_id, now or utcnow()))


def deliver_claimed(ctx: NodeContext, due: list[tuple]) -> int:
    """Send exports this caller has claimed (:func:`_claim_due`, :func:`retry_job_exports`)."""
    from .dimse import AssociationFailed, store_datasets

    by_destination: dict[str, list[tuple]] = defaultdict(list)
    for row in due:
        by_destination[row[1]].append(row)
    delivered = 0
    for destination, rows in by_destination.items():
        peer = destination_peer(ctx, destination)
        try:
            outcomes = store_datasets(peer, ctx.settings.scp.ae_title, [Path(r[2]) for r in rows],
                                      timeout=ctx.settings.pacs.query_timeout_s)
            result = {o.sop_instance_uid: o for o in outcomes}
            messages = {r[0]: (result[r[3]].ok, result[r[3]].message) if r[3] in result else (False, "not sent")
                        for r in rows}
        except (AssociationFailed, OSError) as exc:
            messages = {r[0]: (False, f"association failed: {exc}") for r in rows}
        delivered += _record_outcomes(ctx, messages, destination)
    touched = {row[4] for row in due}
    if touched:
        from .jobs import finish_if_delivered

        for jid in touched:
            finish_if_delivered(ctx, jid)
    return delivered


def _record_outcomes(ctx: NodeContext, outcomes: dict[int, tuple[bool, str]], destination: str) -> int:
    settings = ctx.settings.export
    delivered = 0
    now = utcnow()
    with ctx.store.session() as s:
        for export_id, (ok, message) in outcomes.items():
            export = s.get(Export, export_id)
            export.attempts += 1
            export.last_status = message[:256]
            if ok:
                export.state = ExportState.DELIVERED
                export.delivered_at = now
                delivered += 1
                finished = export.job.finished_at or now
                ctx.metrics.export_latency.observe(max((now - finished).total_seconds(), 0.0))
                ctx.store.audit("export", "success", session=s, peer=destination, study_instance_uid=export.job.study.study_instance_uid,
                                sop_instance_uid=export.sop_instance_uid, detail=export.kind)
            else:
                ctx.metrics.export_failures.inc()
                if export.attempts >= settings.max_attempts:
                    export.state = ExportState.DEAD
                    ctx.metrics.dead_letters.inc()
                    LOGGER.error("export %d of %s to %s: dead-letter after %d tries (%s)", export.id,
                                 export.sop_instance_uid, destination, export.attempts, message)
                    ctx.store.audit("export", "dead-letter", session=s, peer=destination,
                                    sop_instance_uid=export.sop_instance_uid, detail=message[:500])
                else:
                    delay = backoff_s(export.attempts, settings.backoff_initial_s, settings.backoff_max_s)
                    export.next_attempt_at = now + dt.timedelta(seconds=delay)
                    LOGGER.warning("export %d to %s failed (try %d): %s; next try in %.0f s", export.id,
                                   destination, export.attempts, message, delay)
    return delivered


def retry_job_exports(ctx: NodeContext, job_id: int) -> list[tuple]:
    """Revive a job's dead or pending exports, claimed for the caller's immediate try
    (:func:`deliver_claimed`); returns the claimed rows.

    A FAILED job is put back to RECEIVED instead (no rows): the scheduler queues it again.
    """
    with ctx.store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state is JobState.FAILED:
            job.state = JobState.RECEIVED
            job.error = ""
            ctx.store.audit("retry", "success", session=s, detail=f"job {job_id}: failed job queued again")
            return []
        revived = []
        lease = utcnow() + dt.timedelta(seconds=CLAIM_LEASE_S)
        for export in job.exports:
            if export.state in (ExportState.DEAD, ExportState.PENDING):
                export.state = ExportState.PENDING
                export.attempts = 0
                # Claimed for the caller, as _claim_due would: serve's scheduler must not send it meanwhile.
                export.next_attempt_at = lease
                revived.append((export.id, export.destination, export.path, export.sop_instance_uid, job_id))
        if revived and job.state is JobState.DONE:
            job.state = JobState.EXPORTING
        ctx.store.audit("retry", "success", session=s, detail=f"job {job_id}: {len(revived)} export(s) revived")
    return revived
