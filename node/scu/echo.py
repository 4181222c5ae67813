"""Verification SCU: C-ECHO (PS3.4 Annex A, PS3.7 9.1.5)."""

from __future__ import annotations

import logging

from pynetdicom import build_context, sop_class

from medversa.node.settings import Peer, PeerTLS

from .association import OpenAssociation
from .responses import no_response

LOGGER = logging.getLogger(__name__)


def echo(peer: Peer, calling_ae: str, *, timeout: float = 10, tls: PeerTLS | None = None) -> bool:
    """Verify a peer with C-ECHO (PS3.4 Annex A, PS3.7 9.1.5).

    Returns
    -------
    bool
        Whether the peer answered with status Success (0x0000).

    Raises
    ------
    AssociationFailed
        When no association could be established.
    """
    with OpenAssociation(peer, calling_ae, [build_context(sop_class.Verification)], timeout=timeout,
                         tls=tls) as assoc:
        status = assoc.send_c_echo(msg_id=1)
    if not status:
        LOGGER.warning("%s", no_response(peer, "C-ECHO", timeout))
        return False
    code = int(status.Status)
    LOGGER.info("C-ECHO %s: status 0x%04X", peer, code)
    return code == 0x0000

