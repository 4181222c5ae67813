"""When is a study complete? Idle time, confirmed against the PACS where it can answer.

A study is due after ``idle_seconds`` without a new instance. Timeout-only
completion processes half a series that is still arriving slowly, so where a PACS
is configured we ask it (C-FIND, Number of Study Related Instances) and wait,
up to ``completeness_wait_s``, while instances are still missing. Then the routing
rules pick the tasks and a job version is created and queued.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pydicom
from sqlalchemy import func, select

from medversa.dicom_mapping import SeriesKind, classify

from .job_states import move_job, move_study_state
from .job_store import Instance, Job, JobState, Study, StudyState, utcnow
from .jobs import create_job_version
from .node_context import NodeContext
from .routing import InstanceFacts, route

LOGGER = logging.getLogger(__name__)

#: enqueue(job_id, queue) -> None; raises when the broker is unavailable.
Enqueue = Callable[[int, str], None]


def _series_kind(path: str) -> tuple[str, str | None]:
    """The classifier's kind of a spooled instance (header only; empty when unreadable or not used) and,
    for a chest film the node does not read, why (the classifier's reader note)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is routed as "no kind", never a crash
        LOGGER.warning("could not read the header of %s for routing (%s)", path, type(exc).__name__)
        return "", None
    found = classify(ds)
    return (found.kind.value, None) if found.kind is not None else ("", found.reader_note)


def _instance_facts(i: Instance, series_kind: str) -> InstanceFacts:
    return InstanceFacts(i.modality, i.body_part, i.sop_class_uid, i.calling_ae, i.study_description, series_kind)


def _facts(s, study: Study) -> tuple[list[InstanceFacts], dict[str, tuple[Instance, str]]]:
    """Routing facts per instance, and the chest films left out (per series: an instance and why).

    The series kind is read once per series (its first instance with a kind), in one header read
    that also says why a chest film among them is not read.
    """
    rows = list(s.scalars(select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)))
    kinds: dict[str, str] = {}
    left_out: dict[str, tuple[Instance, str]] = {}
    for i in rows:
        if i.series_instance_uid not in kinds or not kinds[i.series_instance_uid]:
            kinds[i.series_instance_uid], why = _series_kind(i.path)
            if why is not None:
                left_out.setdefault(i.series_instance_uid, (i, why))
    return [_instance_facts(i, kinds[i.series_instance_uid]) for i in rows], left_out


def _left_out_films(ctx: NodeContext, left_out: dict[str, tuple[Instance, str]]) -> list[str]:
    """Why each series of chest films that the rules would route is not read (one per series).

    A decubitus film, or one whose Patient Orientation contradicts itself, has no series kind, so no
    rule matches it; had it been readable it would have gone to the model when a rule routes chest
    radiographs from its sender. Empty when ``not_analysed_notice`` is off.
    """
    if not ctx.settings.not_analysed_notice:
        return []
    chest = SeriesKind.CHEST_RADIOGRAPH.value
    return [why for i, why in left_out.values() if route([_instance_facts(i, chest)], ctx.settings.routing).tasks]


def _complete_enough(ctx: NodeContext, study: Study, have: int, now: dt.datetime) -> tuple[bool, str]:
    pacs = ctx.settings.pacs
    if pacs.peer is None or not pacs.confirm_completeness:
        return True, ""
    from .scu import AssociationFailed, count_study_instances

    try:
        expected = count_study_instances(pacs.peer, ctx.settings.scp.ae_title, study.study_instance_uid,
                                         timeout=pacs.query_timeout_s)
    except (AssociationFailed, OSError, TimeoutError) as exc:
        return True, f"completeness not confirmed: PACS query failed ({exc})"
    if expected is None or have >= expected:
        return True, "" if expected is None else f"complete: {have}/{expected} instances"
    waited = (now - study.last_received).total_seconds()
    if waited < pacs.completeness_wait_s:
        LOGGER.info("study %s: %d of %d instances; waiting for the rest", study.id, have, expected)
        return False, ""
    return True, f"processed incomplete: {have} of {expected} instances after waiting {waited:.0f} s"


def queue_due_studies(ctx: NodeContext, enqueue: Enqueue, now: dt.datetime | None = None) -> list[int]:
    """Create and queue jobs for studies idle long enough (and complete); returns the job ids."""
    now = now or utcnow()
    idle = dt.timedelta(seconds=ctx.settings.idle_seconds)
    with ctx.store.session() as s:
        due = [st.id for st in s.scalars(select(Study).where(
            Study.state == StudyState.RECEIVING, Study.is_prior.is_(False), Study.pending_instances > 0,
            Study.last_received <= now - idle))]
    created: list[int] = []
    for study_id in due:
        with ctx.store.session() as s:
            study = s.get(Study, study_id)
            have = s.scalar(select(func.count()).select_from(Instance).where(Instance.study_id == study_id)) or 0
            ok, note = _complete_enough(ctx, study, have, now)
            if not ok:
                continue
            facts, chest_left_out = _facts(s, study)
            routed = route(facts, ctx.settings.routing)
            left_out = _left_out_films(ctx, chest_left_out) if not routed.tasks else []
            if not routed.tasks and not left_out:
                move_study_state(study, StudyState.DONE, reason="no routing rule matched")
                study.pending_instances = 0
                kinds = sorted({f.series_kind for f in facts if f.series_kind})
                why = (f"no routing rule matched (series kinds: {', '.join(kinds)})" if kinds
                       else "no routing rule matched (no instance the node can analyse)")
                LOGGER.info("study %s: %s; nothing to do", study_id, why)
                ctx.store.audit("routing", "skipped", session=s, study_instance_uid=study.study_instance_uid,
                                detail=why)
                continue
        if not routed.tasks:
            # Nothing to read, but films the rules send to the model were left out: the worker writes
            # an SR that says so, so that the reader does not wait for results that will not come.
            LOGGER.info("study %s: nothing the model reads; a not-analysed SR will say why", study_id)
            films = [f"not analysed: {film}" for film in left_out]
            created.append(create_job_version(ctx, study_id, [], films + ([note] if note else [])))
            continue
        notes = [f"rules: {', '.join(routed.rules)}"] + ([note] if note else [])
        created.append(create_job_version(ctx, study_id, routed.tasks, notes, routed.questions))
    # A reader's annotations (SR, GSPS) start ask jobs at once, without waiting for the study (node/ask.py).
    from .ask import queue_annotations

    created += queue_annotations(ctx)
    requeue_waiting_jobs(ctx, enqueue)
    return created


def requeue_waiting_jobs(ctx: NodeContext, enqueue: Enqueue) -> int:
    """Queue every job still RECEIVED (new, or the broker was down when it was created)."""
    with ctx.store.session() as s:
        waiting = [(j.id, j.queue) for j in s.scalars(select(Job).where(Job.state == JobState.RECEIVED))]
    queued = 0
    for job_id, queue in waiting:
        try:
            enqueue(job_id, queue)
        except Exception as exc:  # noqa: BLE001 - the broker is down: keep the job, try again later
            LOGGER.warning("job %d not queued yet (broker unavailable: %s)", job_id, exc)
            break
        with ctx.store.session() as s:
            job = s.get(Job, job_id)
            if job.state is JobState.RECEIVED:
                move_job(job, JobState.QUEUED, reason=f"sent to queue {queue}")
        queued += 1
    return queued
