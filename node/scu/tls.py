"""DICOM TLS for the node's associations as SCU (PS3.15 B.1, TLS 1.2 or later).

An association speaks TLS when the peer's own settings (``peer.tls``, from its configuration
block) or a call's ``tls`` argument enable it.
"""

from __future__ import annotations

import ssl

from medversa.node.settings import Peer, PeerTLS


def client_ssl_context(tls: PeerTLS) -> ssl.SSLContext:
    """A TLS client context (PS3.15 B.1, TLS 1.2 or later) from a peer's TLS settings.

    Our certificate and key are presented to the server (a passphrase-protected key is opened
    with the passphrase from the environment variable the settings name); the server's
    certificate chain is verified against ``ca_certificates`` when ``verify_peers`` is set. Host
    names are not checked (PACS certificates rarely name the address we use); the CA is the
    trust anchor.
    """
    cafile = str(tls.ca_certificates) if tls.ca_certificates else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED if tls.verify_peers else ssl.CERT_NONE
    if tls.certificate and tls.private_key:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key), password=tls.private_key_password())
    return context


def tls_for(peer: Peer, tls: PeerTLS | None) -> PeerTLS | None:
    """The TLS settings of an association: the caller's, else the peer's own (``peer.tls``)."""
    return tls if tls is not None else peer.tls

