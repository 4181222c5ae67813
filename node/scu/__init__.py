"""The node's DICOM client side (SCU) on pynetdicom, one module per service as pynetdicom has them.

- :mod:`.echo`: Verification, C-ECHO (PS3.4 Annex A);
- :mod:`.store`: Storage, C-STORE (PS3.4 Annex B);
- :mod:`.find`: Query, Study Root C-FIND at STUDY and SERIES level (PS3.4 C.4.1, C.6.2.1);
- :mod:`.move` and :mod:`.get`: Retrieve, C-MOVE and C-GET of a whole study or of chosen series,
  one SERIES level request per series on one association (PS3.4 C.4.2, C.4.3), sharing
  :mod:`.retrieve`;
- :mod:`.association`: the AE, timeouts and association set-up every service uses, with
  :mod:`.tls` (DICOM TLS, PS3.15 B.1) and :mod:`.diagnosis` (why a request failed);
- :mod:`.results`: what the services return and raise; :mod:`.responses`: reading DIMSE statuses.

Every call opens one association with the peer, does its work and releases it. Association
problems (connection refused, TCP or ACSE timeout, A-ASSOCIATE-RJ, A-ABORT, every presentation
context rejected where that leaves nothing to do) raise :class:`AssociationFailed`; what a DIMSE
service answers (a failure status, a rejected presentation context for one instance) is returned
as data.

Security: an association speaks DICOM TLS (PS3.15 B.1) when the peer's own settings
(``peer.tls``, from its configuration block) or a call's ``tls`` argument enable it; a plain
connection to a TLS-only peer fails as :class:`AssociationFailed` with a reason that says so.

References: Verification PS3.4 Annex A; Storage PS3.4 Annex B; Query/Retrieve PS3.4 Annex C
(C.4.1 C-FIND, C.4.2 C-MOVE, C.4.3 C-GET, C.6.2 Study Root); DIMSE services and statuses PS3.7
9.1, 9.3 and Annex C; SCP/SCU role selection PS3.7 D.3.3.4; DICOM TLS PS3.15 B.1.
"""

from .echo import echo
from .find import count_study_instances, find_prior_studies, find_study_series
from .get import get_study
from .move import move_study
from .results import AssociationFailed, QueryFailed, RetrieveOutcome, SeriesMatch, StoreOutcome, StudyMatch
from .store import storage_contexts, store_datasets

__all__ = [
    "AssociationFailed",
    "QueryFailed",
    "RetrieveOutcome",
    "SeriesMatch",
    "StoreOutcome",
    "StudyMatch",
    "count_study_instances",
    "echo",
    "find_prior_studies",
    "find_study_series",
    "get_study",
    "move_study",
    "storage_contexts",
    "store_datasets",
]
