"""`medversa ask`: a question about a study on the node or on the PACS, answered now, in this process.

It creates an ask job (:mod:`.ask`) and runs it through the study jobs' runner (:mod:`.jobs`), so a
command-line question is retried, audited and exported exactly as one a reader draws in a viewer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select

from medversa.dicom_mapping import ObjectKind, answer_uids, read_answers
from medversa.inference import Task

from .ask import ask_key, create_ask_job
from .job_failures import TransientJobError
from .job_store import JobState, Study, StudyState
from .jobs import run_job
from .node_context import NodeContext

LOGGER = logging.getLogger(__name__)



@dataclass
class AskOutcome:
    """What `medversa ask` did: its job, the job's final state, the answer SR (if any) and its groups."""

    job_id: int
    state: str
    error: str
    notes: list[str]
    sr_path: Path | None
    answers: list[dict]


def ask_command(ctx: NodeContext, study_uid: str, question: str, region: tuple[float, float, float, float] | None,
                image_uid: str | None) -> AskOutcome:
    """Ask about a study on the node or on the PACS, now, in this process (the model loads here).

    The study's image (``image_uid``, else its first chest radiograph or skin image) comes from the
    spool or is retrieved from the PACS (C-GET works without a running node; C-MOVE needs `medversa
    serve` listening to receive it). The answer SR is exported to the configured destinations.
    """
    if not question.strip() and region is None:
        raise ValueError("ask: give a question, a region (--region X0,Y0,X1,Y1) or both")
    if region is not None and not (region[0] < region[2] and region[1] < region[3]):
        raise ValueError(f"--region {region}: expected X0 < X1 and Y0 < Y1 in pixels")
    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:  # on the PACS only: a row for what will be retrieved, never analysed for it
            study = Study(study_instance_uid=study_uid, state=StudyState.DONE)
            s.add(study)
            s.flush()
        study_id = study.id
    tasks = ([Task.VQA.value] if question.strip() else []) + ([Task.REGION_CAPTIONING.value] if region else [])
    ask = {"source": "command", "question": question.strip(), "region": list(region) if region else None,
           "image_uid": image_uid or ""}
    job_id = create_ask_job(ctx, 0, tasks, [question.strip()] if question.strip() else [], ask,
                             ["asked by medversa ask"], study_id=study_id, state=JobState.QUEUED)
    try:
        state = run_job(ctx, job_id)
    except TransientJobError as exc:
        state = JobState.QUEUED.value
        LOGGER.warning("ask job %d: %s", job_id, exc)
    with ctx.store.session() as s:
        job = ctx.store.job(s, job_id)
        paths = {e.path for e in job.exports}
        error, notes = job.error, list(job.notes or [])
    if not paths and not error:
        folder = ctx.settings.results_dir / study_uid
        _, uid = answer_uids(ctx.algorithm.org_root, ask_key(study_uid, ask, ctx.algorithm.model_id))
        paths = {str(p) for p in folder.glob(f"{ObjectKind.SR}_{uid}.dcm")}
    sr_path = Path(next(iter(paths))) if paths else None
    answers = read_answers(pydicom.dcmread(sr_path)) if sr_path is not None else []
    return AskOutcome(job_id, state, error, notes, sr_path, answers)
