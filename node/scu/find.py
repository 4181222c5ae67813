"""Query SCU: Study Root C-FIND at STUDY and SERIES level (PS3.4 C.4.1, C.6.2.1).

STUDY level: a study's instance count (completeness) and a patient's earlier studies; SERIES
level: a study's series with Modality and Body Part Examined. Not every PACS matches every
key, so what a query asked is checked again on the answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset
from pynetdicom import build_context, sop_class
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS, code_to_category

from medversa.node.settings import Peer, PeerTLS

from .association import OpenAssociation
from .responses import int_or_none, no_response, status_text
from .results import AssociationFailed, QueryFailed, SeriesMatch, StudyMatch

LOGGER = logging.getLogger(__name__)

_DATE_TIME_RE = re.compile(r"^\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?$")


def _c_find(assoc: Association, identifier: Dataset, peer: Peer, timeout: float,
            msg_id: int = 1) -> list[Dataset]:
    """All pending identifiers of one Study Root C-FIND (PS3.4 C.4.1.2)."""
    matches: list[Dataset] = []
    for status, answer in assoc.send_c_find(
            identifier, sop_class.StudyRootQueryRetrieveInformationModelFind, msg_id=msg_id):
        if not status:
            raise AssociationFailed(no_response(peer, "C-FIND", timeout), peer=peer)
        code = int(status.Status)
        category = code_to_category(code)
        if category == "Pending":
            if answer is not None:
                matches.append(answer)
            continue
        if category in ("Success", "Cancel"):
            break
        text = status_text(code, QR_FIND_SERVICE_CLASS_STATUS)
        if "ErrorComment" in status:
            text += f" ({status.ErrorComment})"
        raise QueryFailed(f"C-FIND at {peer} failed: {text}", code)
    return matches


def _find_context() -> list[PresentationContext]:
    return [build_context(sop_class.StudyRootQueryRetrieveInformationModelFind)]


def count_study_instances(peer: Peer, calling_ae: str, study_uid: str, *, timeout: float = 30,
                          tls: PeerTLS | None = None) -> int | None:
    """Number of Study Related Instances the peer holds for one study (PS3.4 C.6.2.1.2, C.3.4).

    Returns
    -------
    int or None
        ``None`` when the study is unknown, the peer leaves the attribute empty, or answers
        with a failure status.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    identifier.NumberOfStudyRelatedInstances = ""
    with OpenAssociation(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        try:
            matches = _c_find(assoc, identifier, peer, timeout)
        except QueryFailed as exc:
            LOGGER.warning("%s", exc)
            return None
    counts = [int_or_none(m.get("NumberOfStudyRelatedInstances")) for m in matches
              if str(m.get("StudyInstanceUID", study_uid)) == study_uid]
    if not counts:
        LOGGER.info("study %s unknown to %s", study_uid, peer)
        return None
    return counts[0]


def _modalities(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values if str(v).strip()]


def _date_time_key(date: str, time_: str) -> str:
    """YYYYMMDDHHMMSS (time right-padded with zeros; fractions dropped); '' without a date."""
    date = (date or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return ""
    digits = (time_ or "").strip().split(".")[0]
    digits = digits if digits.isdigit() else ""
    return date + digits.ljust(6, "0")[:6]


def _before_key(before: str) -> tuple[str, bool]:
    """``before`` as YYYYMMDD[HHMMSS] key and whether it carries a time."""
    if not _DATE_TIME_RE.match(before):
        raise ValueError(f"before={before!r} is not YYYYMMDD[HHMMSS]")
    has_time = len(before) > 8
    return _date_time_key(before[:8], before[8:]), has_time


def _is_before(match: StudyMatch, key: str, has_time: bool) -> bool:
    """Strictly earlier than ``key``; a study on the same day without a time is not."""
    if not match.study_date:
        return False
    if not has_time or match.study_date != key[:8]:
        return match.study_date < key[:8]
    if not match.study_time.strip():
        return False
    return _date_time_key(match.study_date, match.study_time) < key


def find_prior_studies(
    peer: Peer,
    calling_ae: str,
    *,
    patient_id: str,
    modality: str | None = None,
    before: str | None = None,
    exclude_study_uid: str | None = None,
    timeout: float = 30,
    tls: PeerTLS | None = None,
) -> list[StudyMatch]:
    """A patient's earlier studies, most recent first (Study Root C-FIND, PS3.4 C.6.2.1).

    The query asks for STUDY level with Patient ID, Study Date range ``-YYYYMMDD`` and
    Modalities in Study (PS3.4 C.2.2.2: single value, range matching). Everything is also
    checked here, because not every PACS matches all keys: studies are kept only if they are
    strictly before ``before`` (date and time; same-day studies without a time are dropped when
    ``before`` has one), are not ``exclude_study_uid`` and include ``modality`` (a study whose
    modalities the PACS does not return is looked up at SERIES level).

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    QueryFailed
        When the peer answers with a failure status.
    ValueError
        When ``before`` is not YYYYMMDD[HHMMSS].
    """
    key, has_time = _before_key(before) if before else ("", False)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    identifier.StudyInstanceUID = ""
    identifier.StudyDate = f"-{key[:8]}" if key else ""
    identifier.StudyTime = ""
    identifier.AccessionNumber = ""
    identifier.StudyDescription = ""
    identifier.ModalitiesInStudy = modality or ""
    identifier.NumberOfStudyRelatedInstances = ""
    wanted = modality.strip().upper() if modality else None
    with OpenAssociation(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        answers = _c_find(assoc, identifier, peer, timeout)
        studies: list[StudyMatch] = []
        for answer in answers:
            if str(answer.get("PatientID", patient_id)) != patient_id:
                continue  # a PACS that ignored the key
            match = StudyMatch(
                study_instance_uid=str(answer.get("StudyInstanceUID", "")),
                study_date=str(answer.get("StudyDate", "") or ""),
                study_time=str(answer.get("StudyTime", "") or ""),
                accession_number=str(answer.get("AccessionNumber", "") or ""),
                study_description=str(answer.get("StudyDescription", "") or ""),
                modalities_in_study=_modalities(answer.get("ModalitiesInStudy")),
                number_of_instances=int_or_none(answer.get("NumberOfStudyRelatedInstances")),
            )
            if not match.study_instance_uid or match.study_instance_uid == exclude_study_uid:
                continue
            if key and not _is_before(match, key, has_time):
                continue
            if wanted and not match.modalities_in_study:
                match.modalities_in_study = _series_modalities(assoc, match.study_instance_uid, peer, timeout)
            if wanted and wanted not in match.modalities_in_study:
                continue
            studies.append(match)
    studies.sort(key=lambda m: _date_time_key(m.study_date, m.study_time), reverse=True)
    LOGGER.info("C-FIND at %s: %d prior studies", peer, len(studies))
    return studies


def _series_modalities(assoc: Association, study_uid: str, peer: Peer, timeout: float) -> list[str]:
    """Modalities of a study's series (SERIES level C-FIND, PS3.4 C.6.2.1.2)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = ""
    identifier.Modality = ""
    found: list[str] = []
    for answer in _c_find(assoc, identifier, peer, timeout, msg_id=2):
        for value in _modalities(answer.get("Modality")):
            if value not in found:
                found.append(value)
    return found


def find_study_series(peer: Peer, calling_ae: str, study_uids: Sequence[str], *, timeout: float = 30,
                      tls: PeerTLS | None = None) -> dict[str, list[SeriesMatch]]:
    """The series of each study, in Series Number order (Study Root C-FIND at SERIES level,
    PS3.4 C.6.2.1.2), all on one association.

    Keys asked: Series Instance UID (unique), Modality, Body Part Examined, Series Description,
    Series Number and Number of Series Related Instances (optional keys a PACS may leave empty).

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    QueryFailed
        When the peer answers with a failure status.
    """
    found: dict[str, list[SeriesMatch]] = {}
    with OpenAssociation(peer, calling_ae, _find_context(), timeout=timeout, tls=tls) as assoc:
        for msg_id, study_uid in enumerate(study_uids, start=1):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.StudyInstanceUID = study_uid
            identifier.SeriesInstanceUID = ""
            identifier.Modality = ""
            identifier.BodyPartExamined = ""
            identifier.SeriesDescription = ""
            identifier.SeriesNumber = ""
            identifier.NumberOfSeriesRelatedInstances = ""
            series = []
            for answer in _c_find(assoc, identifier, peer, timeout, msg_id=msg_id):
                uid = str(answer.get("SeriesInstanceUID", "") or "")
                if not uid or str(answer.get("StudyInstanceUID", study_uid)) != study_uid:
                    continue  # a PACS that ignored the study key
                series.append(SeriesMatch(
                    series_instance_uid=uid,
                    modality=(_modalities(answer.get("Modality")) or [""])[0],
                    body_part_examined=str(answer.get("BodyPartExamined", "") or "").strip().upper(),
                    series_description=str(answer.get("SeriesDescription", "") or ""),
                    series_number=int_or_none(answer.get("SeriesNumber")),
                    number_of_instances=int_or_none(answer.get("NumberOfSeriesRelatedInstances")),
                ))
            series.sort(key=lambda m: (m.series_number is None, m.series_number or 0))
            found[study_uid] = series
    return found

