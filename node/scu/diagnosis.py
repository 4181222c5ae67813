"""Why an association request failed, in words that name the peer and the likely cause.

pynetdicom reports a failed request only as "not established"; what we saw while requesting
(TCP connection made or not, the PDUs received, the time taken) tells refused, timed out,
rejected (PS3.8 7.1.1.9, with result, source and reason), aborted (A-ABORT, PS3.8 9.3.8) and
TLS mismatches apart, and :func:`may_succeed_later` decides whether a retry makes sense.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from medversa.node.settings import Peer, PeerTLS

from .tls import tls_for


@dataclass
class Negotiation:
    """What we saw while requesting an association (for the error message)."""

    connected: bool = False
    pdus: list[Any] = field(default_factory=list)
    seconds: float = 0.0


def all_contexts_rejected(assoc: Association) -> bool:
    """The peer sent A-ASSOCIATE-AC but accepted none of our presentation contexts."""
    primitive = assoc.acceptor.primitive
    return primitive is not None and primitive.result == 0x00 and not assoc.accepted_contexts


def rejected_summary(assoc: Association) -> str:
    parts = [f"{UID(cx.abstract_syntax).name}: {cx.status}" for cx in assoc.rejected_contexts]
    return "; ".join(parts) or "no presentation context accepted"


def why_not_established(assoc: Association, seen: Negotiation, peer: Peer, timeout: float,
                         tls: PeerTLS | None) -> str:
    """Explain a failed association request, naming the peer."""
    tls = tls_for(peer, tls)
    if not seen.connected:
        if seen.seconds >= 0.9 * timeout:
            return f"cannot connect to {peer}: no TCP connection within {timeout} s"
        return f"cannot connect to {peer}: {_diagnose_connect(peer, timeout - seen.seconds, tls)}"
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return (f"association rejected by {peer} ({primitive.result_str}; source: "
                f"{primitive.source_str}; reason: {primitive.reason_str})")
    if all_contexts_rejected(assoc):
        return (f"{peer} accepted the association but rejected every presentation context "
                f"({rejected_summary(assoc)})")
    aborts = [pdu for pdu in seen.pdus if isinstance(pdu, A_ABORT_RQ)]
    if aborts:
        pdu = aborts[0]
        return (f"association aborted by {peer} (A-ABORT source {pdu.source}, "
                f"reason {pdu.reason_diagnostic})")
    if not seen.pdus and seen.seconds >= 0.9 * timeout:
        return f"no answer from {peer} to the association request within {timeout} s (ACSE timeout)"
    if not seen.pdus:
        hint = ("" if tls is not None and tls.enabled else
                " (a peer that accepts DICOM TLS only does this to a plain connection: check its tls settings)")
        return f"association aborted by {peer}: connection closed without an A-ASSOCIATE response{hint}"
    return f"association with {peer} failed (unexpected answer: {type(seen.pdus[-1]).__name__})"


def may_succeed_later(assoc: Association) -> bool:
    """Whether a failed association request may succeed later (see :class:`~.results.AssociationFailed`)."""
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return primitive.result != 0x01  # 0x01 rejected-permanent, 0x02 rejected-transient
    return not all_contexts_rejected(assoc)


def _diagnose_connect(peer: Peer, budget: float, tls: PeerTLS | None) -> str:
    """Why pynetdicom could not connect: retry a plain TCP connection (within what is left of
    the timeout) to get the operating system's error."""
    started = time.monotonic()
    budget = max(0.1, min(budget, 5.0))
    try:
        with socket.create_connection((peer.host, peer.port), timeout=budget):
            pass
    except TimeoutError:
        return f"no TCP connection within {budget:.1f} s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if tls is not None and tls.enabled:
        return "the TCP port is open but the TLS handshake failed (certificates or protocol)"
    elapsed = time.monotonic() - started
    return f"the connection failed (a retry connected after {elapsed:.1f} s)"

