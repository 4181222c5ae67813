"""Retention: remove spooled instances, priors and results of finished, delivered studies.

After ``retention.days`` a study whose latest job is DONE (every export delivered)
loses its files; rows and the audit trail stay. Above ``cleanup_above`` disk fill the
oldest studies whose results reached a destination (and fetched priors) go first
regardless of age; a study with no export destination keeps its files for the full
period, since its results folder is the only copy of its results. Nothing not yet
processed or exported is ever removed.
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


def _removable(study: Study, emergency: bool) -> bool:
    """Finished and delivered; in an emergency, only if its results exist somewhere else too."""
    if study.state is StudyState.PURGED or study.pending_instances:
        return False
    if study.is_prior:
        return True
    jobs = sorted(study.jobs, key=lambda j: j.version)
    if not jobs or study.state is not StudyState.DONE:
        return False
    latest = jobs[-1]
    if latest.state is not JobState.DONE or not all(e.state is ExportState.DELIVERED for e in latest.exports):
        return False
    return bool(latest.exports) or not emergency


def apply_retention(ctx: NodeContext, now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    cfg = ctx.settings.retention
    cutoff = now - dt.timedelta(days=cfg.days)
    emergency = ctx.spool.disk_fill() >= cfg.cleanup_above
    removed: list[str] = []
    with ctx.store.session() as s:
        studies = list(s.scalars(select(Study).where(Study.state != StudyState.PURGED).order_by(Study.last_received)))
        for study in studies:
            expired = study.last_received <= cutoff
            if not (expired or emergency) or not _removable(study, emergency=not expired):
                continue
            ctx.spool.remove_study(study.study_instance_uid)
            shutil.rmtree(ctx.settings.results_dir / study.study_instance_uid, ignore_errors=True)
            move_study_state(study, StudyState.PURGED, reason="retention")
            removed.append(study.study_instance_uid)
            ctx.store.audit("retention", "success", session=s, study_instance_uid=study.study_instance_uid,
                            detail=f"older than {cfg.days} days" if expired else "emergency clean-up")
            if emergency and ctx.spool.disk_fill() < cfg.cleanup_above:
                emergency = False
    if removed:
        LOGGER.info("retention removed the files of %d finished study/studies", len(removed))
    return removed
