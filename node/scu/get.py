"""Retrieve SCU with C-GET: the peer sends a study back on our own association (PS3.4 C.4.3).

We take the SCP role for the storage classes the node processes (role selection, PS3.7
D.3.3.4) and answer each C-STORE sub-operation with a status (PS3.4 B.2.3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydicom import Dataset
from pynetdicom import build_context, build_role, evt, sop_class
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS

from medversa.node.dicom_classes import COMPRESSED, STORAGE_CLASSES, UNCOMPRESSED
from medversa.node.settings import Peer, PeerTLS

from .association import MAX_CONTEXTS, OpenAssociation
from .results import RetrieveOutcome
from .retrieve import collect_responses, combine_outcomes, retrieve_identifiers

LOGGER = logging.getLogger(__name__)

#: Storage SOP classes we accept as C-STORE SCP inside a C-GET (PS3.4 B.5): those the node processes.
GET_STORAGE_CLASSES: tuple[str, ...] = tuple(STORAGE_CLASSES)


#: Compressed transfer syntaxes offered (one context each) for C-GET, so the SCP can send
#: instances as stored; pydicom decodes all of them with the installed plug-ins.
GET_COMPRESSED_SYNTAXES: tuple[str, ...] = COMPRESSED


#: C-STORE status we return in a C-GET when ``on_instance`` raises (PS3.4 B.2.3, A7xx: out of
#: resources) and when the received data set cannot be decoded (C000: cannot understand).
STATUS_CALLBACK_FAILED = 0xA702


STATUS_CANNOT_UNDERSTAND = 0xC000


def get_contexts() -> tuple[list[PresentationContext], list[Any]]:
    """Contexts and SCP role selection items for a Study Root C-GET (PS3.4 C.4.3, PS3.7 D.3.3.4).

    One uncompressed context per storage class in :data:`GET_STORAGE_CLASSES`, plus one per
    compressed syntax in :data:`GET_COMPRESSED_SYNTAXES`, so the SCP may send instances as stored.
    """
    contexts = [build_context(sop_class.StudyRootQueryRetrieveInformationModelGet)]
    for uid in GET_STORAGE_CLASSES:
        contexts.append(build_context(uid, list(UNCOMPRESSED)))
        contexts.extend(build_context(uid, [ts]) for ts in GET_COMPRESSED_SYNTAXES)
    if len(contexts) > MAX_CONTEXTS:  # pragma: no cover - guarded by the constants above
        raise ValueError(f"{len(contexts)} presentation contexts exceed {MAX_CONTEXTS}")
    roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE_CLASSES]
    return contexts, roles


def get_study(peer: Peer, calling_ae: str, study_uid: str, on_instance: Callable[[Dataset], int | None], *,
              series_uids: Sequence[str] | None = None, timeout: float = 300,
              tls: PeerTLS | None = None) -> RetrieveOutcome:
    """Retrieve a study, or some of its series, over our own association (Study Root C-GET,
    PS3.4 C.4.3); with ``series_uids`` one SERIES level C-GET per series, as for
    :func:`~.move.move_study`.

    The peer sends each instance with C-STORE on the same association; ``on_instance`` gets it
    (with file meta) and may return a C-STORE failure status (PS3.4 B.2.3) to refuse it (None
    or 0 accepts it). If it raises, that C-STORE is answered with 0xA702 (out of resources), an
    undecodable data set with 0xC000; the peer counts those as failed sub-operations.

    Raises
    ------
    AssociationFailed
        When no association could be established or it was lost.
    """
    def on_store(event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception:  # noqa: BLE001 - answered with a status
            LOGGER.warning("C-GET from %s: undecodable instance", peer, exc_info=True)
            return STATUS_CANNOT_UNDERSTAND
        try:
            status = on_instance(ds)
        except Exception as exc:  # noqa: BLE001 - answered with a status
            LOGGER.warning("C-GET from %s: handling instance %s failed: %s", peer,
                           ds.get("SOPInstanceUID", "?"), type(exc).__name__, exc_info=True)
            return STATUS_CALLBACK_FAILED
        return int(status or 0x0000)

    contexts, roles = get_contexts()
    outcomes = []
    with OpenAssociation(peer, calling_ae, contexts, timeout=timeout, tls=tls, ext_neg=roles,
                         handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for msg_id, identifier in enumerate(retrieve_identifiers(study_uid, series_uids), start=1):
            responses = assoc.send_c_get(identifier, sop_class.StudyRootQueryRetrieveInformationModelGet,
                                         msg_id=msg_id)
            outcomes.append(collect_responses(responses, "C-GET", peer, timeout, QR_GET_SERVICE_CLASS_STATUS))
    return combine_outcomes(outcomes)

