"""Retrieve SCU with C-MOVE: the peer sends a study to an AE it knows (PS3.4 C.4.2)."""

from __future__ import annotations

from collections.abc import Sequence

from pynetdicom import build_context, sop_class
from pynetdicom.status import QR_MOVE_SERVICE_CLASS_STATUS

from medversa.node.settings import Peer, PeerTLS

from .association import OpenAssociation
from .results import RetrieveOutcome
from .retrieve import collect_responses, combine_outcomes, retrieve_identifiers


def move_study(peer: Peer, calling_ae: str, study_uid: str, destination_ae: str, *,
               series_uids: Sequence[str] | None = None, timeout: float = 300,
               tls: PeerTLS | None = None) -> RetrieveOutcome:
    """Ask the peer to send a study, or some of its series, to ``destination_ae`` (Study Root
    C-MOVE, PS3.4 C.4.2).

    With ``series_uids`` one SERIES level C-MOVE is sent per series, in the order given, on
    one association: a PACS that stops a retrieve at its first failed sub-operation (Orthanc
    1.10 does) then loses only that series. The peer must know ``destination_ae`` (its
    address book); an unknown destination gives ``ok=False`` (status 0xA801). ``timeout``
    bounds each wait for the next response.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    context = [build_context(sop_class.StudyRootQueryRetrieveInformationModelMove)]
    outcomes = []
    with OpenAssociation(peer, calling_ae, context, timeout=timeout, tls=tls) as assoc:
        for msg_id, identifier in enumerate(retrieve_identifiers(study_uid, series_uids), start=1):
            responses = assoc.send_c_move(identifier, destination_ae,
                                          sop_class.StudyRootQueryRetrieveInformationModelMove, msg_id=msg_id)
            outcomes.append(collect_responses(responses, f"C-MOVE to {destination_ae}", peer, timeout,
                                              QR_MOVE_SERVICE_CLASS_STATUS))
    return combine_outcomes(outcomes)

