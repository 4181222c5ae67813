"""Association set-up for the node's SCU services: the AE, TLS, negotiation and release.

Every call of a service opens one association with the peer, does its work and releases it.
The one ``timeout`` of a call is applied to the AE's TCP connection (``connection_timeout``),
association negotiation and release (``acse_timeout``, PS3.8 9.1.1 ARTIM), each awaited DIMSE
message (``dimse_timeout``) and network inactivity (``network_timeout``), so a peer that never
answers costs at most about that long per step. A request that does not end in an established
association raises :class:`~.results.AssociationFailed` with the reason (:mod:`.diagnosis`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from medversa.node.pynetdicom_settings import configure_pynetdicom
from medversa.node.settings import Peer, PeerTLS

from .diagnosis import Negotiation, may_succeed_later, why_not_established
from .results import AssociationFailed, QueryFailed
from .tls import client_ssl_context, tls_for

LOGGER = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_CONTEXTS = 128


def make_ae(calling_ae: str, timeout: float) -> AE:
    """A requesting AE with every timeout set to ``timeout`` (module docstring).

    pynetdicom's process-wide switches are set here, before the first association of any
    SCU service (:func:`~medversa.node.pynetdicom_settings.configure_pynetdicom`).
    """
    configure_pynetdicom()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def request_association(
    peer: Peer,
    calling_ae: str,
    contexts: list[PresentationContext],
    *,
    timeout: float,
    tls: PeerTLS | None,
    max_pdu: int = 0,
    ext_neg: list[Any] | None = None,
    handlers: list[Any] | None = None,
) -> tuple[Association, Negotiation]:
    """Request an association (PS3.8 7.1); return it whether established or not."""
    seen = Negotiation()

    def on_open(event: evt.Event) -> None:
        seen.connected = True

    def on_pdu(event: evt.Event) -> None:
        seen.pdus.append(event.pdu)

    ae = make_ae(calling_ae, timeout)
    tls = tls_for(peer, tls)
    try:
        tls_args = (client_ssl_context(tls), peer.host) if tls is not None and tls.enabled else None
    except (OSError, ValueError) as exc:  # missing file, bad key or passphrase, unset variable
        message = f"DICOM TLS to {peer} not possible with its settings: {type(exc).__name__}: {exc}"
        LOGGER.warning("%s", message)
        raise AssociationFailed(message, peer=peer, transient=False) from exc
    evt_handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_PDU_RECV, on_pdu), *(handlers or [])]
    LOGGER.debug("requesting association %s -> %s (%d contexts)", calling_ae, peer, len(contexts))
    started = time.monotonic()
    try:
        assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title,
                             max_pdu=max_pdu, ext_neg=ext_neg, tls_args=tls_args,
                             evt_handlers=evt_handlers)
    except OSError as exc:  # e.g. socket.gaierror: the host name does not resolve
        message = f"cannot connect to {peer}: {type(exc).__name__}: {exc.strerror or exc}"
        LOGGER.warning("%s", message)
        raise AssociationFailed(message, peer=peer) from exc
    seen.seconds = time.monotonic() - started
    assoc.unbind(evt.EVT_PDU_RECV, on_pdu)
    return assoc, seen


class OpenAssociation:
    """Context manager: an established association, released on exit (aborted on errors that
    leave it in an unknown state)."""

    def __init__(self, peer: Peer, calling_ae: str, contexts: list[PresentationContext], *,
                 timeout: float, tls: PeerTLS | None, ext_neg: list[Any] | None = None,
                 handlers: list[Any] | None = None) -> None:
        self.peer = peer
        self.calling_ae = calling_ae
        self.contexts = contexts
        self.timeout = timeout
        self.tls = tls
        self.ext_neg = ext_neg
        self.handlers = handlers
        self.assoc: Association | None = None

    def __enter__(self) -> Association:
        assoc, seen = request_association(self.peer, self.calling_ae, self.contexts, timeout=self.timeout,
                                          tls=self.tls, ext_neg=self.ext_neg, handlers=self.handlers)
        if not assoc.is_established:
            message = why_not_established(assoc, seen, self.peer, self.timeout, self.tls)
            LOGGER.warning("%s", message)
            raise AssociationFailed(message, peer=self.peer, transient=may_succeed_later(assoc))
        self.assoc = assoc
        return assoc

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if self.assoc is None or not self.assoc.is_established:
            return
        if exc_type is None or issubclass(exc_type, (AssociationFailed, QueryFailed)):
            self.assoc.release()
        else:
            self.assoc.abort()

