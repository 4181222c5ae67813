"""Exports: the sender. Claims due export rows, C-STOREs them, and returns each try's outcome.

Every (object, destination) pair is an export row (node/job_store.py). A sender claims the due rows
(:func:`claim_due`), sends them (:func:`send`) and returns one :class:`ExportOutcome` per row; the
job side (:func:`medversa.node.jobs.deliver_due`) applies the outcomes to the rows and finishes
the jobs. The retry policy lives here: a failure schedules the next try after
``initial * 2**(tries-1)`` seconds (capped), which survives restarts because it is a column, not a
timer; after ``max_attempts`` the row goes to DEAD (audited) until ``medversa retry``
(:func:`next_try`). Each destination's ``tls`` block (PS3.15 B.1) applies to its associations; an
association that cannot be made (a plain connection to a TLS-only peer included) leaves the rows
pending with the reason in ``last_status`` and in the log.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from .job_store import Export, ExportState
from .node_context import NodeContext
from .settings import ExportSettings, Peer

LOGGER = logging.getLogger(__name__)

#: How long a claimed export is left to the sender that claimed it before another may try it.
CLAIM_LEASE_S = 600.0


@dataclass(frozen=True)
class ClaimedExport:
    """An export row this sender may try now (claimed: no concurrent sender tries it meanwhile)."""

    export_id: int
    job_id: int
    destination: str  # ``AE@HOST:PORT``
    path: Path
    sop_instance_uid: str

    @classmethod
    def of(cls, export: Export) -> ClaimedExport:
        return cls(export.id, export.job_id, export.destination, Path(export.path), export.sop_instance_uid)


@dataclass(frozen=True)
class ExportOutcome:
    """What one try of one claimed export came to: delivered, or not with the peer's (or the
    association's) reason in ``status``."""

    export: ClaimedExport
    delivered: bool
    status: str


def backoff_s(attempts: int, initial: float, maximum: float) -> float:
    return min(maximum, initial * 2 ** max(attempts - 1, 0))


def next_try(attempts: int, settings: ExportSettings, now: dt.datetime) -> tuple[ExportState, dt.datetime | None]:
    """After ``attempts`` failed tries of a row: PENDING with the time of the next try, or DEAD."""
    if attempts >= settings.max_attempts:
        return ExportState.DEAD, None
    return ExportState.PENDING, now + dt.timedelta(
        seconds=backoff_s(attempts, settings.backoff_initial_s, settings.backoff_max_s))


def destination_peer(ctx: NodeContext, destination: str) -> Peer:
    """The configured destination an export row names (``AE@HOST:PORT``), with its TLS settings.

    A row whose destination has left the configuration is still tried, over a plain
    association (no TLS settings remain for it).
    """
    for peer in ctx.settings.export.destinations:
        if str(peer) == destination:
            return peer
    return Peer.parse(destination)


def claim_due(ctx: NodeContext, job_id: int | None, now: dt.datetime) -> list[ClaimedExport]:
    """The due exports this caller may send, claimed so no concurrent caller sends them too.

    ``serve``'s scheduler and a worker finishing a job both deliver due exports; each due row is
    taken by a conditional UPDATE (still pending and due: move ``next_attempt_at`` a lease ahead),
    so exactly one caller gets it and its try is counted once. A sender that dies leaves the row
    to be tried again when the lease runs out.
    """
    with ctx.store.session() as s:
        query = select(Export).where(Export.state == ExportState.PENDING, Export.next_attempt_at <= now)
        if job_id is not None:
            query = query.where(Export.job_id == job_id)
        candidates = [ClaimedExport.of(e) for e in s.scalars(query)]
    lease = now + dt.timedelta(seconds=CLAIM_LEASE_S)
    claimed = []
    with ctx.store.session() as s:
        for row in candidates:
            taken = s.execute(update(Export).where(Export.id == row.export_id, Export.state == ExportState.PENDING,
                                                   Export.next_attempt_at <= now).values(next_attempt_at=lease))
            if taken.rowcount == 1:
                claimed.append(row)
    return claimed


def send(ctx: NodeContext, claimed: list[ClaimedExport]) -> list[ExportOutcome]:
    """C-STORE the claimed exports, one association per destination; one outcome per export.

    Writes nothing: the caller records the outcomes (:func:`medversa.node.jobs.apply_export_outcomes`).
    """
    from .scu import AssociationFailed, store_datasets

    by_destination: dict[str, list[ClaimedExport]] = defaultdict(list)
    for row in claimed:
        by_destination[row.destination].append(row)
    outcomes: list[ExportOutcome] = []
    for destination, rows in by_destination.items():
        peer = destination_peer(ctx, destination)
        try:
            stored = store_datasets(peer, ctx.settings.scp.ae_title, [r.path for r in rows],
                                    timeout=ctx.settings.pacs.query_timeout_s)
            result = {o.sop_instance_uid: o for o in stored}
            outcomes += [ExportOutcome(r, result[r.sop_instance_uid].ok, result[r.sop_instance_uid].message)
                         if r.sop_instance_uid in result else ExportOutcome(r, False, "not sent") for r in rows]
        except (AssociationFailed, OSError) as exc:
            outcomes += [ExportOutcome(r, False, f"association failed: {exc}") for r in rows]
    return outcomes
