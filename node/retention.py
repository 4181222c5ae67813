"""Retention: remove spooled instances, priors and results of finished, delivered studies.

After ``retention.days`` a study whose latest job is DONE (every export delivered)
loses its files; rows and the audit trail stay. Above ``cleanup_above`` disk fill the
oldest such studies go first regardless of age. Nothing not yet processed or
exported is ever removed.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil

from sqlalchemy import select

from .job_states import move_study_state
from .job_store import ExportState, JobState, Study, StudyState, utcnow
from .node_context import NodeContext

LOGGER = logging.getLogger(__name__)


def _removable(study: Study) -> bool:
    if study.state is StudyState.PURGED or study.pending_instances:
        return False
    if study.is_prior:
        return True
    jobs = sorted(study.jobs, key=lambda j: j.version)
    if not jobs or study.state is not StudyState.DONE:
        return False
    latest = jobs[-1]
    return latest.state is JobState.DONE and all(e.state is ExportState.DELIVERED for e in latest.exports)


def apply_retention(ctx: NodeContext, now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    cfg = ctx.settings.retention
    cutoff = now - dt.timedelta(days=cfg.days)
    emergency = ctx.spool.disk_fill() >= cfg.cleanup_above
    removed: list[str] = []
    with ctx.store.session() as s:
        studies = list(s.scalars(select(Study).where(Study.state != StudyState.PURGED).order_by(Study.last_received)))
        for study in studies:
            if not _removable(study):
                continue
            if study.last_received > cutoff and not emergency:
                continue
            ctx.spool.remove_study(study.study_instance_uid)
            shutil.rmtree(ctx.settings.results_dir / study.study_instance_uid, ignore_errors=True)
            move_study_state(study, StudyState.PURGED, reason="retention")
            removed.append(study.study_instance_uid)
            ctx.store.audit("retention", "success", session=s, study_instance_uid=study.study_instance_uid,
                            detail="emergency clean-up" if emergency else f"older than {cfg.days} days")
            if emergency and ctx.spool.disk_fill() < cfg.cleanup_above:
                emergency = False
    if removed:
        LOGGER.info("retention removed the files of %d finished study/studies", len(removed))
    return removed
