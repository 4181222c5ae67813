"""What the SCU services answer: outcomes, query matches, and the two errors they raise.

Association problems raise :class:`AssociationFailed`; a C-FIND failure status raises
:class:`QueryFailed`; everything else a DIMSE service answers (a failure status, a rejected
presentation context for one instance) is returned as one of the outcome records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from medversa.node.settings import Peer


class AssociationFailed(ConnectionError):
    """No usable association with a peer: refused, rejected, aborted, timed out or unreachable.

    Attributes
    ----------
    peer
        The peer we tried.
    outcomes
        For :func:`~.store.store_datasets` only: the per-instance outcomes reached before the
        association was lost (instances not attempted are missing).
    transient
        Whether trying again later may succeed: true for an unreachable peer, a timeout, an
        abort or a transient rejection (PS3.8 7.1.1.9 result 2); false for a permanent
        rejection (result 1), a peer that accepted no presentation context, and TLS settings
        that cannot work. Callers decide on retries from this, not from the message.
    """

    def __init__(self, message: str, *, peer: Peer | None = None,
                 outcomes: Sequence[StoreOutcome] = (), transient: bool = True) -> None:
        super().__init__(message)
        self.peer = peer
        self.outcomes: list[StoreOutcome] = list(outcomes)
        self.transient = transient


class QueryFailed(RuntimeError):
    """The peer answered a C-FIND with a failure status (PS3.4 C.4.1.1.4)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StoreOutcome:
    """What happened to one instance of :func:`~.store.store_datasets`.

    ``status`` is the C-STORE response status (PS3.4 B.2.3), ``None`` when no request was sent
    (unreadable file, rejected presentation context) or no response came. ``ok`` is true for
    Success and Warning statuses (the peer stored the instance).
    """

    sop_instance_uid: str
    status: int | None
    ok: bool
    message: str


@dataclass
class StudyMatch:
    """One study a Study Root C-FIND at STUDY level returned (PS3.4 C.6.2.1.2)."""

    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modalities_in_study: list[str] = field(default_factory=list)
    number_of_instances: int | None = None


@dataclass
class SeriesMatch:
    """One series a Study Root C-FIND at SERIES level returned (PS3.4 C.6.2.1.2)."""

    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    series_number: int | None = None
    number_of_instances: int | None = None


@dataclass
class RetrieveOutcome:
    """The result of a C-MOVE or C-GET (PS3.4 C.4.2.1.6, C.4.3.1.6).

    Counts are the final response's Number of Completed/Failed/Warning Sub-operations (the
    last pending response's where the final one leaves them out). ``ok`` is true when the final
    status is Success or Warning and no sub-operation failed.
    """

    completed: int
    failed: int
    warning: int
    status: int | None
    ok: bool
    message: str

