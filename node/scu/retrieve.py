"""What C-MOVE and C-GET share: the retrieve identifiers and the folding of their responses.

A study is retrieved whole (one STUDY level request) or series by series (one SERIES level
request each, on one association); the responses' sub-operation counts and final status
become one :class:`~.results.RetrieveOutcome` (PS3.4 C.4.2.1.6, C.4.3.1.6).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from pydicom import Dataset
from pynetdicom.status import code_to_category

from medversa.node.settings import Peer

from .responses import int_or_none, no_response, status_text
from .results import AssociationFailed, RetrieveOutcome

LOGGER = logging.getLogger(__name__)


def retrieve_identifiers(study_uid: str, series_uids: Sequence[str] | None) -> list[Dataset]:
    """One STUDY level identifier, or one SERIES level identifier per series (PS3.4 C.4.2.2.1:
    unique keys down to the retrieve level)."""
    if not series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return [identifier]
    out = []
    for uid in series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = uid
        out.append(identifier)
    return out


def collect_responses(responses: Iterator[tuple[Dataset, Dataset | None]], service: str, peer: Peer,
                      timeout: float, table: dict[int, tuple[str, str]]) -> RetrieveOutcome:
    """Fold C-MOVE/C-GET responses into a :class:`RetrieveOutcome` (PS3.4 C.4.2.1.6, C.4.3.1.6)."""
    counts = {"completed": 0, "failed": 0, "warning": 0}
    names = {"completed": "NumberOfCompletedSuboperations",
             "failed": "NumberOfFailedSuboperations",
             "warning": "NumberOfWarningSuboperations"}
    final: Dataset | None = None
    for status, _identifier in responses:
        if not status:
            raise AssociationFailed(no_response(peer, service, timeout), peer=peer)
        for key, keyword in names.items():
            value = int_or_none(status.get(keyword))
            if value is not None:
                counts[key] = value
        if code_to_category(int(status.Status)) != "Pending":
            final = status
            break
    if final is None:
        raise AssociationFailed(f"{service} at {peer} ended without a final response", peer=peer)
    code = int(final.Status)
    category = code_to_category(code)
    ok = category in ("Success", "Warning") and counts["failed"] == 0
    message = (f"{service}: {counts['completed']} completed, {counts['failed']} failed, "
               f"{counts['warning']} warning; status {status_text(code, table)}")
    if "ErrorComment" in final:
        message += f" ({final.ErrorComment})"
    (LOGGER.info if ok else LOGGER.warning)("%s from %s", message, peer)
    return RetrieveOutcome(counts["completed"], counts["failed"], counts["warning"], code, ok, message)


def combine_outcomes(outcomes: list[RetrieveOutcome]) -> RetrieveOutcome:
    """One outcome for the per-series retrieves of a study: counts summed, the first failure's
    status (else the last status), every message."""
    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if not o.ok]
    status = failed[0].status if failed else outcomes[-1].status
    return RetrieveOutcome(sum(o.completed for o in outcomes), sum(o.failed for o in outcomes),
                           sum(o.warning for o in outcomes), status, not failed,
                           "; ".join(o.message for o in outcomes))

