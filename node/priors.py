"""Priors for a longitudinal comparison: C-FIND the PACS, C-MOVE (or C-GET) the latest into the spool.

The worker asks the configured PACS (Study Root, PS3.4 C.6.2) for earlier studies of
the same patient and modality, picks the most recent, and retrieves it to our own AE
title (it lands in the spool through our SCP) with a timeout; C-GET is the
configurable alternative for PACS that cannot move to us. Any failure returns no
prior and a note: the other tasks still run and the comparison is skipped. The PACS
peer's ``tls`` block applies to the query and the retrieve (PS3.15 B.1); the Patient ID
is logged only through :func:`medversa.node.phi.phi`.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom import Dataset
from sqlalchemy import select

from .context import NodeContext
from .phi import phi
from .scp import record_instance
from .store import Instance, Study

LOGGER = logging.getLogger(__name__)


def _mark_prior(ctx: NodeContext, study_uid: str) -> None:
    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            s.add(Study(study_instance_uid=study_uid, is_prior=True))


def _files_of(ctx: NodeContext, study_uid: str) -> list[Path]:
    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            return []
        return [Path(p) for p in s.scalars(select(Instance.path).where(Instance.study_id == study.id))]


def fetch_prior(ctx: NodeContext, current: list[Dataset]) -> tuple[list[Dataset] | None, str]:
    """(prior study datasets or None, a note saying what happened); a skipped comparison is logged
    with its reason, as a warning when the PACS failed to answer (``pacs.query_timeout_s`` and
    ``pacs.retrieve_timeout_s`` bound each wait)."""
    prior, note = _fetch_prior(ctx, current)
    if prior is None:
        study = str(current[0].get("StudyInstanceUID", "")) if current else ""
        LOGGER.log(logging.WARNING if "failed" in note else logging.INFO, "study %s: %s", study, note)
    return prior, note


def _fetch_prior(ctx: NodeContext, current: list[Dataset]) -> tuple[list[Dataset] | None, str]:
    from .dimse import AssociationFailed, find_prior_studies, get_study, move_study

    pacs = ctx.settings.pacs
    if pacs.peer is None:
        return None, "longitudinal comparison skipped: no PACS configured for priors"
    if not current:
        return None, "longitudinal comparison skipped: no current images"
    first = current[0]
    patient_id = str(first.get("PatientID", ""))
    if not patient_id:
        return None, "longitudinal comparison skipped: the study has no Patient ID"
    before = f"{first.get('StudyDate', '')}{first.get('StudyTime', '')}".split(".")[0] or None
    calling = ctx.settings.scp.ae_title
    LOGGER.info("study %s: asking %s for earlier studies of patient %s", first.StudyInstanceUID, pacs.peer,
                phi(patient_id))
    try:
        matches = find_prior_studies(pacs.peer, calling, patient_id=patient_id, modality=str(first.get("Modality", "")),
                                     before=before, exclude_study_uid=str(first.StudyInstanceUID),
                                     timeout=pacs.query_timeout_s)
    except (AssociationFailed, OSError, TimeoutError, ValueError, RuntimeError) as exc:
        return None, f"longitudinal comparison skipped: prior query failed ({exc})"
    if not matches:
        return None, "longitudinal comparison skipped: no earlier study of this patient on the PACS"
    prior_uid = matches[0].study_instance_uid
    _mark_prior(ctx, prior_uid)
    if not _files_of(ctx, prior_uid):
        try:
            if pacs.retrieve == "get":
                def store(ds: Dataset) -> None:
                    buffer = BytesIO()
                    ds.save_as(buffer, enforce_file_format=True)
                    spooled = ctx.spool.write(prior_uid, str(ds.SOPInstanceUID), buffer.getvalue())
                    record_instance(ctx.store, ds, str(spooled.path), spooled.size, pacs.peer.ae_title, is_prior=True)

                outcome = get_study(pacs.peer, calling, prior_uid, store, timeout=pacs.retrieve_timeout_s)
            else:
                outcome = move_study(pacs.peer, calling, prior_uid, calling, timeout=pacs.retrieve_timeout_s)
        except (AssociationFailed, OSError, TimeoutError) as exc:
            return None, f"longitudinal comparison skipped: prior retrieve failed ({exc})"
        if not outcome.ok and not _files_of(ctx, prior_uid):
            return None, f"longitudinal comparison skipped: prior retrieve failed ({outcome.message})"
    files = _files_of(ctx, prior_uid)
    if not files:
        return None, "longitudinal comparison skipped: the prior study arrived empty"
    LOGGER.info("prior study %s retrieved: %d instance(s)", prior_uid, len(files))
    return [pydicom.dcmread(p) for p in files], f"prior study {prior_uid} used for the comparison"
