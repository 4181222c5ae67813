"""Patient identifiers in logs: in clear only where ``logging.log_phi`` allows, else a keyed hash.

Every place the node writes a patient identifier (Patient's Name, Patient ID, Patient's Birth
Date, Accession Number: attributes PS3.15 Annex E, Table E.1-1 removes in de-identification)
into a log line passes it through :func:`phi`. With ``log_phi: false`` (the default) it becomes
the first 12 hex digits of HMAC-SHA256 under a per-installation key, so one patient's log lines
can still be matched to each other, while a dictionary of known Patient IDs cannot be hashed
and compared without the key (a plain SHA-256 could).

The key comes from the environment (``MEDVERSA_PHI_SECRET``), else from ``data_dir/phi-secret``:
32 random bytes written once with mode 0600. It is never read from the configuration file,
which may sit in a repository. ``serve`` and its embedded worker share the data folder and thus
the key; workers on other hosts need the same variable (or the same shared ``data_dir``).

Rows in the job store keep no identifier in clear, whatever ``log_phi`` says: ``Study.patient_ref``
holds :func:`pseudonym` of the Patient ID, and audit rows name peers and UIDs only. The job
store outlives the logs and is copied for support; ``log_phi`` is a debugging switch for logs.

The policy is per process, set once by :func:`configure` (``NodeContext`` does it); until then
identifiers are hashed with a key that lives only as long as the process: never in clear.

Texts the node does not write itself (exception messages and warnings of pydicom and pynetdicom,
which quote the value they failed on) may hold an identifier of the data set being handled: the
SCP reads the data set's identifiers (:func:`identifiers_in_file`, even from a file too broken to
parse) and handles it inside :func:`identifiers_scope`; :func:`scrub` and the log handler's
:class:`ScrubFilter` replace each identifier, and each name component of three or more characters,
with its keyed hash before anything is written.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import tag_for_keyword

LOGGER = logging.getLogger(__name__)

#: Environment variable holding the hashing key (any string; hex of 32 random bytes recommended).
SECRET_ENV = "MEDVERSA_PHI_SECRET"
#: The key file in ``data_dir`` used when the variable is not set.
SECRET_FILE = "phi-secret"
#: Hex digits of the HMAC kept: 48 bits, enough to tell a day's patients apart in a log.
DIGITS = 12


@dataclass(frozen=True)
class PHIPolicy:
    """Whether identifiers are logged in clear, and the key of their hash otherwise."""

    log_phi: bool
    key: bytes = field(repr=False)

    def pseudonym(self, value: object) -> str:
        """The keyed hash of ``value`` ('' for an empty value), whatever ``log_phi`` says."""
        text = "" if value is None else str(value).strip()
        if not text:
            return ""
        return hmac.new(self.key, text.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:DIGITS]

    def __call__(self, value: object) -> str:
        """``value`` as it may appear in a log line under this policy."""
        return ("" if value is None else str(value)) if self.log_phi else self.pseudonym(value)


_policy = PHIPolicy(log_phi=False, key=secrets.token_bytes(32))


def load_key(data_dir: Path) -> bytes:
    """The installation's key: ``MEDVERSA_PHI_SECRET``, else ``data_dir/phi-secret`` (made once, 0600)."""
    from_env = os.environ.get(SECRET_ENV, "")
    if from_env:
        return from_env.encode()
    path = Path(data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            LOGGER.warning("%s was readable by others (mode %o): set to 0600", path, mode)
            path.chmod(0o600)
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
        fh.flush()
        os.fsync(fh.fileno())
    LOGGER.info("new key for hashing patient identifiers in logs: %s (mode 0600)", path)
    return path.read_text().strip().encode()


def configure(log_phi: bool, data_dir: Path) -> PHIPolicy:
    """Set this process's policy from the settings (``logging.log_phi``, ``data_dir``)."""
    global _policy
    _policy = PHIPolicy(log_phi=log_phi, key=load_key(data_dir))
    if log_phi:
        LOGGER.warning("logging.log_phi is on: patient names and IDs are written into the logs in clear")
    return _policy


def policy() -> PHIPolicy:
    """The policy in force in this process."""
    return _policy


def phi(value: object) -> str:
    """A patient identifier as this process may log it: in clear with ``log_phi``, else hashed."""
    return _policy(value)


def pseudonym(value: object) -> str:
    """The keyed hash of a patient identifier, for rows in the job store (never in clear)."""
    return _policy.pseudonym(value)


# --- Identifiers inside texts (exception messages, library warnings) ---------------------------------

#: Attributes whose values identify the patient (PS3.15 Annex E, Table E.1-1), besides every
#: top-level element of VR PN (person names: the patient's, the referring physician's...).
IDENTIFYING_KEYWORDS = ("PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthTime", "AccessionNumber",
                        "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "PatientBirthName",
                        "PatientMotherBirthName", "OtherPatientNames")
_TAGS = tuple(int(tag_for_keyword(k) or 0) for k in IDENTIFYING_KEYWORDS) + (0x00100010, 0x00080090)
#: Name components shorter than this are not searched for on their own (they would blank common words).
MIN_PART = 3
_SPLIT = re.compile(r"[\^=\\\s]+")

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

_in_scope: ContextVar[tuple[str, ...]] = ContextVar("phi_identifiers", default=())


def _texts(value: object) -> list[str]:
    """A raw or converted value as the strings an error message could show it as."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).rstrip(b"\x00 ")
        return list(dict.fromkeys([raw.decode("latin-1"), raw.decode("utf-8", "replace")]))
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [t for v in value for t in _texts(v)]
    return [str(value)]


def _variants(values: list[str]) -> tuple[str, ...]:
    """Whole values and their name components, longest first (so a whole name goes before its parts)."""
    found: set[str] = set()
    for text in values:
        text = text.strip()
        if len(text) >= 2:
            found.add(text)
            found.update(p for p in _SPLIT.split(text) if len(p) >= MIN_PART)
    return tuple(sorted(found, key=len, reverse=True))


def identifiers_in(ds: object) -> tuple[str, ...]:
    """The patient identifiers of a pydicom data set as they could appear in a text; never raises.

    Values are taken as stored (raw bytes where pydicom has not converted them), so a value that
    cannot be decoded is still found.
    """
    values: list[str] = []
    try:
        for tag in list(ds.keys()):  # type: ignore[attr-defined]
            try:
                elem = ds.get_item(tag)  # type: ignore[attr-defined]
                if int(tag) in _TAGS or getattr(elem, "VR", None) == "PN":
                    values.extend(_texts(elem.value))
                elif int(tag) == 0x00101002:  # Other Patient IDs Sequence
                    for item in ds[tag].value:  # type: ignore[index]
                        values.extend(_texts(item.get_item(0x00100020).value) if 0x00100020 in item else [])
            except Exception:  # noqa: BLE001 - a hostile element: take what the others give
                continue
    except Exception:  # noqa: BLE001
        pass
    return _variants(values)


def identifiers_in_file(path: Path) -> tuple[str, ...]:
    """The patient identifiers of a Part 10 file; never raises.

    pydicom reads the identifying elements (raw, unconverted); where it cannot parse the file, the
    elements are looked for in its bytes (explicit and implicit VR little endian), so a file too
    broken to read still has its identifiers kept out of the logs.
    """
    from pydicom import dcmread

    found: list[str] = []
    try:
        ds = dcmread(path, force=True, stop_before_pixels=True, specific_tags=list(_TAGS))
        found.extend(identifiers_in(ds))
    except Exception:  # noqa: BLE001 - fall back to the bytes
        pass
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError:
        head = b""
    found.extend(_raw_values(head))
    return _variants(found)


def _raw_values(data: bytes) -> list[str]:
    """Values of the identifying elements found by their tag in encoded little-endian bytes."""
    out: list[str] = []
    for tag in _TAGS:
        key = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        start = data.find(key)
        while start >= 0:
            after = data[start + 4:]
            if after[:2] in _LONG_VRS:  # explicit VR with a 4-byte length after 2 reserved bytes
                length, offset = int.from_bytes(after[4:8], "little"), 8
            elif after[:2].isalpha() and after[:2].isupper():  # explicit VR: VR, then a 2-byte length
                length, offset = int.from_bytes(after[2:4], "little"), 4
            else:  # implicit VR: a 4-byte length
                length, offset = int.from_bytes(after[:4], "little"), 4
            if 0 < length <= 1024:
                out.extend(_texts(after[offset:offset + length]))
            start = data.find(key, start + 4)
    return out


def scrub(text: str, identifiers: tuple[str, ...] | None = None) -> str:
    """``text`` with each patient identifier replaced by its log form (:func:`phi`).

    ``identifiers`` defaults to those in scope (:func:`identifiers_scope`). With ``log_phi`` the
    text is returned as it is: the policy allows identifiers in the logs.
    """
    ids = _in_scope.get() if identifiers is None else identifiers
    if not ids or _policy.log_phi or not text:
        return text
    for value in ids:
        if value.lower() in text.lower():
            text = re.sub(re.escape(value), f"[patient identifier {_policy.pseudonym(value)}]", text,
                          flags=re.IGNORECASE)
    return text


@contextmanager
def identifiers_scope(identifiers: tuple[str, ...]) -> Iterator[None]:
    """While handling one data set: every log record of this thread (and context) is scrubbed of
    ``identifiers`` by :class:`ScrubFilter`, library warnings included."""
    token = _in_scope.set(tuple(identifiers))
    try:
        yield
    finally:
        _in_scope.reset(token)


class ScrubFilter(logging.Filter):
    """A handler filter: the record's message and traceback lose the identifiers in scope.

    The node's own log lines are written with identifiers hashed already (:func:`phi`); this
    catches texts it does not write itself: exception messages and warnings from pydicom and
    pynetdicom, which quote the values they fail on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _in_scope.get()
        if not ids or _policy.log_phi:
            return True
        record.msg, record.args = scrub(record.getMessage(), ids), None
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), ids)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text, ids)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, ids)
        return True
