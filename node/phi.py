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
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

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
