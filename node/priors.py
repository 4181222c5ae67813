"""Priors for a longitudinal comparison: choose the prior on the PACS, retrieve it, wait until it is recorded.

The worker asks the configured PACS (Study Root, PS3.4 C.6.2) for the patient's studies
before the current one (STUDY level C-FIND: Patient ID, Study Date range), keeps those of
the same modality (CR and DX count as one: both are projection radiography), asks for the
series of the most recent few (SERIES level C-FIND: Modality, Body Part Examined, Series
Description, Number of Series Related Instances) and takes the most recent study that has
a series of that modality on a compatible body part (:func:`body_regions`).

Only those series are retrieved (one SERIES level C-MOVE to our own AE title, or C-GET, per
series: the study may also hold objects we do not store, such as our own earlier SR and SEG,
and a PACS that stops a retrieve at its first failed sub-operation then loses only that
series). A prior already in the spool is used as it is; one whose files are gone (retention
keeps the rows, manual clean-up) or that is incomplete is retrieved again.

C-MOVE sub-operations arrive through our Storage SCP, which answers Success once the file is
spooled and writes its row a little later (the recorder's 250 ms batch window). So after the
retrieve the job waits, polling the job store and bounded by ``pacs.retrieve_timeout_s``,
until every instance that reached the spool during the retrieve (and at least as many as the
PACS reported completed) has its row. With failed or warning sub-operations what arrived is
used and the note says so.

Nothing here raises: every problem gives no prior and a reason, and
:attr:`PriorFetch.retryable` says whether the PACS could not be reached or did not answer
in time (worth another try later). The PACS peer's ``tls`` block applies to every
association (PS3.15 B.1); the Patient ID is logged only through :func:`medversa.node.phi.phi`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom import Dataset
from sqlalchemy import func, select

from medversa.dicom_mapping import header as h

from .job_states import move_study_state
from .job_store import Instance, Study, StudyState, utcnow
from .node_context import NodeContext
from .phi import phi
from .scp import hash_phi, inspect_instance, record_instances
from .scu import (
    AssociationFailed,
    QueryFailed,
    SeriesMatch,
    StudyMatch,
    find_prior_studies,
    find_study_series,
    get_study,
    move_study,
)

LOGGER = logging.getLogger(__name__)

SKIPPED = "longitudinal comparison skipped"

#: How many of the most recent earlier studies of the modality are looked at series by series.
MAX_CANDIDATES = 5

#: Modalities that count as the same for a comparison (PS3.3 C.7.3.1.1.1): CR and DX are both
#: projection radiography; a chest radiograph on one is compared with one on the other.
_MODALITY_FAMILIES = (frozenset({"CR", "DX"}),)

#: Body Part Examined values (PS3.16 Annex L defined terms and common variants) by region,
#: matched as substrings of the value without separators ("CHESTABDPELVIS" is chest and abdomen).
_BODY_PART_REGIONS = {
    "CHEST": ("CHEST", "THORAX", "TORAX", "LUNG"),
    "ABDOMEN": ("ABD", "LIVER", "KIDNEY", "PANCREAS", "SPLEEN"),
    "SKIN": ("SKIN",),
}
#: Word prefixes in descriptions that name a region (as the series classifier reads them).
_DESCRIPTION_REGIONS = {
    "CHEST": ("chest", "thora", "torax", "cxr", "lung", "pulmo"),
    "ABDOMEN": ("abd", "liver", "hepat", "pancrea", "kidney", "renal", "splee", "splen"),
    "SKIN": ("skin", "derm", "naev", "nevus", "melano", "mole", "cutan"),
}
_DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription")

#: First and longest pause between two looks at the job store while waiting for rows.
_POLL_FIRST_S, _POLL_MAX_S = 0.02, 0.25


@dataclass(frozen=True)
class PriorFetch:
    """What :func:`fetch_prior` found.

    ``datasets`` is None when there is no prior to compare with; ``note`` says what happened
    either way (job notes, log). ``retryable`` is true only when the PACS could not be reached
    or did not answer in time (connection refused, association aborted or rejected transiently,
    timeout): another try later may find the prior. The study's UID, date (DA, YYYYMMDD) and
    description identify the prior that was chosen, also when its retrieve failed.
    """

    datasets: list[Dataset] | None
    note: str
    retryable: bool = False
    study_uid: str = ""
    study_date: str = ""
    study_description: str = ""


def modality_family(modality: str) -> frozenset[str]:
    """The modalities compared with ``modality`` (itself, and CR with DX)."""
    modality = modality.strip().upper()
    for family in _MODALITY_FAMILIES:
        if modality in family:
            return family
    return frozenset({modality}) if modality else frozenset()


def body_regions(body_part: str, *descriptions: str) -> frozenset[str]:
    """The body regions a series covers: from Body Part Examined when it has a value (CHEST,
    THORAX -> CHEST; CHESTABDOMEN -> CHEST and ABDOMEN; any other value, e.g. KNEE, stands for
    itself), else from the words of the descriptions ("CXR PA" -> CHEST); empty when nothing says.
    """
    part = re.sub(r"[^A-Z]", "", (body_part or "").upper())
    if part:
        found = {region for region, names in _BODY_PART_REGIONS.items() if any(n in part for n in names)}
        return frozenset(found or {part})
    words = h.tokens(*(d or "" for d in descriptions))
    return frozenset(region for region, prefixes in _DESCRIPTION_REGIONS.items()
                     if any(w.startswith(prefixes) for w in words))


def regions_compatible(a: frozenset[str], b: frozenset[str]) -> bool:
    """Two series are comparable when they share a region, or when either says nothing about it
    (a radiograph without body part information is taken for a chest, as the classifier does)."""
    return not a or not b or bool(a & b)


def fetch_prior(ctx: NodeContext, current: list[Dataset]) -> PriorFetch:
    """The prior study to compare ``current`` with, retrieved and recorded; never raises.

    Each wait is bounded: ``pacs.query_timeout_s`` for the C-FINDs, ``pacs.retrieve_timeout_s``
    for each retrieve message and again for the rows of what arrived. A skipped comparison is
    logged with its reason, as a warning when the PACS failed to answer or the retrieve failed.
    """
    study = h.text(current[0], "StudyInstanceUID") if current else ""
    try:
        result = _fetch_prior(ctx, current)
    except Exception as exc:  # noqa: BLE001 - a prior problem never fails the job
        LOGGER.exception("study %s: fetching the prior failed", study)
        result = PriorFetch(None, f"{SKIPPED}: unexpected error while fetching the prior ({type(exc).__name__})")
    trouble = result.retryable or any(word in result.note for word in ("failed", "missing", "unreadable"))
    LOGGER.log(logging.WARNING if trouble else logging.INFO, "study %s: %s", study, result.note)
    return result


def _fetch_prior(ctx: NodeContext, current: list[Dataset]) -> PriorFetch:
    pacs = ctx.settings.pacs
    if pacs.peer is None:
        return PriorFetch(None, f"{SKIPPED}: no PACS configured for priors")
    if not current:
        return PriorFetch(None, f"{SKIPPED}: no current images")
    first = current[0]
    patient_id = h.text(first, "PatientID")
    if not patient_id:
        return PriorFetch(None, f"{SKIPPED}: the study has no Patient ID")
    modality = h.upper(first, "Modality")
    family = modality_family(modality)
    wanted = [ds for ds in current if h.upper(ds, "Modality") in family] or current
    here = frozenset().union(*(body_regions(h.text(ds, "BodyPartExamined"),
                                            *(h.text(ds, k) for k in _DESCRIPTION_KEYWORDS)) for ds in wanted))
    if not h.text(first, "StudyDate"):
        return PriorFetch(None, f"{SKIPPED}: the study has no Study Date, so no study can be told earlier")
    before = f"{h.text(first, 'StudyDate')}{h.text(first, 'StudyTime')}".split(".")[0]
    calling = ctx.settings.scp.ae_title
    LOGGER.info("study %s: asking %s for earlier studies of patient %s", h.text(first, "StudyInstanceUID"),
                pacs.peer, phi(patient_id))
    try:
        matches = find_prior_studies(pacs.peer, calling, patient_id=patient_id, modality=None, before=before,
                                     exclude_study_uid=h.text(first, "StudyInstanceUID"),
                                     timeout=pacs.query_timeout_s)
        matches = [m for m in matches if not m.modalities_in_study or family & set(m.modalities_in_study)]
        series = find_study_series(pacs.peer, calling, [m.study_instance_uid for m in matches[:MAX_CANDIDATES]],
                                   timeout=pacs.query_timeout_s) if matches else {}
    except AssociationFailed as exc:
        return PriorFetch(None, f"{SKIPPED}: prior query failed ({exc})", retryable=exc.transient)
    except (QueryFailed, ValueError) as exc:
        return PriorFetch(None, f"{SKIPPED}: prior query failed ({exc})")
    if not matches:
        return PriorFetch(None, f"{SKIPPED}: no earlier study of this patient on the PACS (modality "
                                f"{'/'.join(sorted(family)) or 'any'})")
    for match in matches[:MAX_CANDIDATES]:
        listed = series.get(match.study_instance_uid, [])
        if not listed:  # a PACS without SERIES level answers: the whole study, body part unchecked
            return _use(ctx, match, None, patient_id)
        chosen = [s for s in listed if s.modality in family and regions_compatible(
            here, body_regions(s.body_part_examined, s.series_description, match.study_description))]
        if chosen:
            return _use(ctx, match, chosen, patient_id)
    regions = ", ".join(sorted(here)) or "unknown"
    return PriorFetch(None, f"{SKIPPED}: no earlier {modality} study of this patient on the PACS covers a compatible "
                            f"body part (current: {regions}; {min(len(matches), MAX_CANDIDATES)} looked at)")


def _use(ctx: NodeContext, match: StudyMatch, chosen: list[SeriesMatch] | None, patient_id: str) -> PriorFetch:
    """Retrieve the chosen series (None: the whole study) of the prior where the spool lacks them,
    and read them."""
    uid = match.study_instance_uid
    series_uids = [s.series_instance_uid for s in chosen] if chosen is not None else None
    known = [s.number_of_instances for s in chosen] if chosen is not None else [match.number_of_instances]
    expected = sum(n for n in known if n is not None) if None not in known else None
    found = PriorFetch(None, "", False, uid, match.study_date, match.study_description)
    processed = _mark_prior(ctx, uid, patient_id)
    try:
        return _read(ctx, match, series_uids, expected, found, top_up=not processed)
    finally:
        _settle(ctx, uid)


def _read(ctx: NodeContext, match: StudyMatch, series_uids: list[str] | None, expected: int | None,
          found: PriorFetch, top_up: bool) -> PriorFetch:
    """``top_up``: retrieve also when some of the prior is on the node (false for a study the node
    processed itself and still holds: new instances would reopen it for processing)."""
    uid = match.study_instance_uid
    have = _present(ctx, uid, series_uids)
    retrieved = ""
    if not have or (top_up and expected is not None and len(have) < expected):
        why = "not on the node" if not have else f"{len(have)} of {expected} instance(s) on the node"
        if _rows(ctx, uid, series_uids) > len(have):
            why += " (spooled files gone)"
        LOGGER.info("prior study %s: %s; retrieving %s (%s)", uid, why,
                    f"{len(series_uids)} series" if series_uids else "the study", ctx.settings.pacs.retrieve)
        try:
            retrieved = f"retrieved, {why}: {_retrieve(ctx, uid, series_uids)}"
        except AssociationFailed as exc:
            return replace(found, note=f"{SKIPPED}: prior retrieve failed ({exc})", retryable=exc.transient)
        have = _present(ctx, uid, series_uids)
    if not have:
        return replace(found, note=f"{SKIPPED}: prior study {uid} ({_when(match)}) not available"
                                    + (f" ({retrieved})" if retrieved else ""))
    datasets, unreadable = [], 0
    for path in have:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception:  # noqa: BLE001 - vanished or damaged since: use the rest
            unreadable += 1
    if not datasets:
        return replace(found, note=f"{SKIPPED}: prior study {uid}: none of its {len(have)} file(s) is readable")
    note = f"prior study {uid} ({_when(match)}) used for the comparison: {len(datasets)} instance(s)"
    if retrieved:
        note += f" ({retrieved})"
    if unreadable:
        note += f"; {unreadable} unreadable file(s) left out"
    return replace(found, datasets=datasets, note=note)


def _when(match: StudyMatch) -> str:
    date = match.study_date
    text = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "undated"
    return f"{text}, {match.study_description}" if match.study_description else text


def _retrieve(ctx: NodeContext, uid: str, series_uids: list[str] | None) -> str:
    """C-MOVE (to our own AE title) or C-GET of the series, then wait for their rows.

    Returns what happened, for the note: the PACS's counts, and whether the wait ran out.
    """
    pacs = ctx.settings.pacs
    peer = pacs.peer
    if peer is None:  # checked by the caller; here for the type checker, never raised in practice
        raise ValueError("pacs.peer: no PACS configured")
    calling = ctx.settings.scp.ae_title
    before = _spooled(ctx, uid)
    started = utcnow()
    if pacs.retrieve == "get":
        def store(ds: Dataset) -> int | None:
            problem = inspect_instance(ds, h.sop_class_uid(ds), h.sop_instance_uid(ds))
            if problem is not None:  # the same checks as our Storage SCP's (PS3.4 B.2.3 statuses)
                LOGGER.warning("C-GET of prior %s: %s refused, 0x%04X: %s", uid, h.sop_instance_uid(ds), *problem)
                return problem[0]
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            spooled = ctx.spool.write(uid, h.sop_instance_uid(ds), buffer.getvalue())
            # Recorded as the node's own retrieve (like a C-MOVE sub-operation whose Move Originator is
            # us): it starts no analysis unless the PACS sends the instance for one.
            record_instances(ctx.store, [(ds, str(spooled.path), spooled.size, peer.ae_title, None, True)],
                             is_prior=True)
            return None

        outcome = get_study(peer, calling, uid, store, series_uids=series_uids, timeout=pacs.retrieve_timeout_s)
        service = "C-GET"
    else:
        outcome = move_study(peer, calling, uid, calling, series_uids=series_uids,
                             timeout=pacs.retrieve_timeout_s)
        service = "C-MOVE"
    after = _spooled(ctx, uid)
    arrived = sorted(sop for sop, stamp in after.items() if before.get(sop) != stamp)
    reported = outcome.completed + outcome.warning
    waited, recorded = _wait_recorded(ctx, arrived, max(reported, len(arrived)), started, pacs.retrieve_timeout_s)
    text = outcome.message
    if not outcome.ok:
        text = f"{service} failed: {text}; " + (f"using the {len(arrived)} instance(s) that arrived" if arrived
                                                else "nothing arrived")
    if recorded < max(reported, len(arrived)):
        text += (f"; only {recorded} of {max(reported, len(arrived))} instance(s) recorded after waiting "
                 f"{waited:.1f} s: the rest missing")
    return text


def _wait_recorded(ctx: NodeContext, sop_uids: list[str], reported: int, since: datetime,
                   timeout: float) -> tuple[float, int]:
    """Poll the job store until the rows of ``sop_uids`` are written by this retrieve (received
    at or after ``since``) and number at least ``reported``, or ``timeout`` seconds pass.

    Returns the seconds waited and the number of rows found.
    """
    started = time.monotonic()
    pause = _POLL_FIRST_S
    while True:
        with ctx.store.session() as s:
            recorded = s.scalar(select(func.count()).select_from(Instance).where(
                Instance.sop_instance_uid.in_(sop_uids), Instance.received_at >= since)) if sop_uids else 0
        waited = time.monotonic() - started
        if (recorded >= len(sop_uids) and recorded >= reported) or waited >= timeout:
            if waited > 1.0:
                LOGGER.info("prior rows: %d of %d recorded after %.1f s", recorded, max(reported, len(sop_uids)),
                            waited)
            return waited, recorded or 0
        time.sleep(min(pause, max(0.0, timeout - waited)))
        pause = min(pause * 2, _POLL_MAX_S)


def _spooled(ctx: NodeContext, study_uid: str) -> dict[str, tuple[int, int]]:
    """The spool's files of one study: SOP Instance UID -> (inode, mtime in ns); a file written
    again (same name) has a new inode, since the spool renames a new file into place."""
    folder = ctx.spool.path_for(study_uid, "0").parent
    found: dict[str, tuple[int, int]] = {}
    if folder.is_dir():
        for path in folder.glob("*.dcm"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found[path.stem] = (stat.st_ino, stat.st_mtime_ns)
    return found


def _of(study_uid: str, series_uids: list[str] | None) -> list:
    """Where-clauses for the rows of a study's chosen series (None: all of them)."""
    where = [Study.study_instance_uid == study_uid]
    return where + ([Instance.series_instance_uid.in_(series_uids)] if series_uids is not None else [])


def _present(ctx: NodeContext, study_uid: str, series_uids: list[str] | None) -> list[Path]:
    """Files of the study's chosen series that have a row and still exist."""
    with ctx.store.session() as s:
        paths = s.scalars(select(Instance.path).join(Study).where(*_of(study_uid, series_uids)))
        return [Path(p) for p in paths if Path(p).is_file()]


def _rows(ctx: NodeContext, study_uid: str, series_uids: list[str] | None) -> int:
    with ctx.store.session() as s:
        return s.scalar(select(func.count()).select_from(Instance).join(Study).where(
            *_of(study_uid, series_uids))) or 0


def _mark_prior(ctx: NodeContext, study_uid: str, patient_id: str) -> bool:
    """A study row before the first instance arrives, so the recorder files the retrieved
    instances under a prior (never queued for processing of its own). While the prior is in use
    it has an instance pending, which keeps retention (by age or emergency clean-up) from removing
    its files under the retrieve or the read; a purged study is left alone by retention anyway.

    Returns whether the study is one the node received and processed itself and still holds.
    """
    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            s.add(Study(study_instance_uid=study_uid, is_prior=True, patient_ref=hash_phi(patient_id),
                        pending_instances=1))
            return False
        if study.is_prior:
            study.pending_instances = max(study.pending_instances, 1)
        return not study.is_prior and study.state is not StudyState.PURGED


def _settle(ctx: NodeContext, study_uid: str) -> None:
    """After the prior was read (or not): retention may remove its files again. A prior has
    nothing pending any more; a purged study whose files came back is DONE once more."""
    with ctx.store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            return
        if study.is_prior:
            study.pending_instances = 0
        if study.state is StudyState.PURGED and any(Path(i.path).is_file() for i in study.instances):
            # Purged: nothing was pending, whatever the retrieve added.
            move_study_state(study, StudyState.DONE, reason="files retrieved again")
            study.pending_instances = 0
