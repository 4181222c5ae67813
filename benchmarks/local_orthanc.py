"""A local Orthanc PACS (Debian package ``orthanc``, 1.10.1) for tests, benchmarks and demos, driven over REST
and DIMSE.

:class:`OrthancServer` writes a JSON configuration into a work folder, starts
``/usr/sbin/Orthanc`` on free ports with its storage and index in that folder, waits for
``GET /system`` and stops it again. Orthanc plays the PACS side of the DICOM services our node
uses: Storage SCP (PS3.4 Annex B), Study Root Query/Retrieve SCP for C-FIND, C-MOVE and C-GET
(PS3.4 Annex C) and Verification SCP (PS3.4 Annex A).

Configuration option names were checked against Orthanc 1.10.1 (its ``--config`` sample file, the
strings in the binary, its start-up log and behaviour): DicomAet, DicomPort, HttpPort,
RemoteAccessAllowed, AuthenticationEnabled, StorageDirectory, IndexDirectory, DicomModalities,
DicomModalitiesInDatabase, DicomCheckCalledAet, StableAge, LuaScripts, Plugins,
DicomAlwaysAllow{Echo,Store,Find,Move,Get}, OverwriteInstances and DicomScuTimeout are understood.
1.10.1 has no ``HttpBindAddress``/``DicomBindAddress`` options and silently ignores unknown keys:
``"RemoteAccessAllowed": false`` limits HTTP to localhost; the DICOM port listens on all
interfaces. A graceful stop takes Orthanc about 3 s; throw-away servers use ``stop(kill=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medversa.node.settings import Peer

from .peers import free_port

LOGGER = logging.getLogger(__name__)

ORTHANC_BINARY = Path(os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc"))
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Raises
    ------
    TimeoutError
        When ``timeout`` seconds pass first (the last value is in the message).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s (last value: {value!r})")
        time.sleep(interval)


class OrthancServer:
    """One Orthanc process with its own configuration, ports, storage and log in ``workdir``.

    Parameters
    ----------
    workdir
        Folder for ``orthanc.json``, ``orthanc.log`` and the storage/index (``storage/``).
    aet
        Orthanc's own AE title (``DicomAet``).
    modalities
        Known DICOM peers, name -> (AE title, host, port): C-MOVE destinations and C-STORE
        targets (``DicomModalities``).
    lua_scripts
        Lua scripts run by Orthanc's event handler (``LuaScripts``).
    extra_config
        Options merged last into the configuration (override anything).
    stable_age
        Seconds without new instances after which Orthanc calls a study stable (``StableAge``).
    verbose
        Start Orthanc with ``--verbose`` (every DICOM and HTTP request in the log).
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        lua_scripts: list[Path] | None = None,
        extra_config: dict | None = None,
        stable_age: int = 2,
        *,
        verbose: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.lua_scripts = [Path(p) for p in lua_scripts or []]
        self.extra_config = dict(extra_config or {})
        self.stable_age = stable_age
        self.verbose = verbose
        self._dicom_port: int | None = None
        self._http_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    def config(self) -> dict[str, Any]:
        """The configuration :meth:`start` writes (ports must have been chosen)."""
        cfg: dict[str, Any] = {
            "Name": f"test-{self.aet}",
            "DicomAet": self.aet,
            "DicomPort": self._dicom_port,
            "HttpPort": self._http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "DicomModalities": {name: [ae, host, port] for name, (ae, host, port) in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomCheckCalledAet": False,
            "StableAge": self.stable_age,
            "LuaScripts": [str(p) for p in self.lua_scripts],
            "Plugins": [],
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "OverwriteInstances": True,
            # Short outgoing timeouts so a dead C-MOVE destination fails fast in tests.
            "DicomScuTimeout": 5,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until ``GET /system`` answers.

        Raises
        ------
        RuntimeError
            If Orthanc exits or does not answer within 30 s (the message ends with its log).
        """
        if self._process is not None and self._process.poll() is None:
            return self
        if not ORTHANC_BINARY.exists():
            raise FileNotFoundError(f"{ORTHANC_BINARY} is not installed (Debian package 'orthanc')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self._dicom_port is None:
            self._dicom_port = free_port()
        if self._http_port is None:
            self._http_port = free_port()
            while self._http_port == self._dicom_port:
                self._http_port = free_port()
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        args = [str(ORTHANC_BINARY)]
        if self.verbose:
            args.append("--verbose")
        args.append(str(self.config_path))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"Orthanc exited with status {code} at start:\n{self.log_tail()}")
            if self._answers():
                LOGGER.info("Orthanc %s up: DICOM port %s, HTTP port %s", self.aet, self.dicom_port,
                            self.http_port)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer GET /system within {START_TIMEOUT_S} s:\n"
                           f"{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system", timeout=1) as rsp:
                return rsp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Terminate Orthanc (SIGTERM), kill it after a grace period; a no-op when not running.

        A graceful stop takes Orthanc about 3 s. ``kill=True`` sends SIGKILL at once: for
        throw-away servers whose storage nobody reads again.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            process.wait(timeout=STOP_GRACE_S)
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            LOGGER.warning("Orthanc did not stop within %s s; killing it", STOP_GRACE_S)
            process.kill()
            process.wait(timeout=STOP_GRACE_S)

    def restart(self) -> OrthancServer:
        """Stop and start again on the same ports with the same storage and index."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def dicom_port(self) -> int:
        if self._dicom_port is None:
            raise RuntimeError("Orthanc has not been started")
        return self._dicom_port

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            raise RuntimeError("Orthanc has not been started")
        return self._http_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def peer(self) -> Peer:
        return Peer(ae_title=self.aet, host="127.0.0.1", port=self.dicom_port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        """One REST call; JSON answers are decoded, anything else is returned as bytes."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as rsp:
                payload = rsp.read()
                kind = rsp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"Orthanc {method} {path} -> HTTP {exc.code}: {detail}") from None
        return json.loads(payload) if "json" in kind and payload else payload

    def upload(self, path_or_bytes: Path | str | bytes) -> str:
        """POST /instances one DICOM file; return Orthanc's instance ID."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        answer = self.request("POST", "/instances", data, content_type="application/dicom")
        return str(answer["ID"])

    def instances(self) -> list[str]:
        return list(self.request("GET", "/instances"))

    def studies(self) -> list[str]:
        return list(self.request("GET", "/studies"))

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances of one study: Orthanc ``ID``, main DICOM tags, SOP class and transfer syntax.

        Orthanc 1.10.1's ``/tools/find`` (Level Instance, Expand) returns the instance main tags
        (SOPInstanceUID, InstanceNumber, ...) but not SOPClassUID; the SOP class and transfer
        syntax come from the instance metadata (``SopClassUid``, ``TransferSyntax``).
        """
        found = self.request("POST", "/tools/find", {
            "Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid}})
        out = []
        for item in found:
            row = {"ID": item["ID"], **item.get("MainDicomTags", {})}
            if "SOPClassUID" not in row or "TransferSyntaxUID" not in row:
                meta = self.request("GET", f"/instances/{item['ID']}/metadata?expand")
                row.setdefault("SOPClassUID", meta.get("SopClassUid"))
                row.setdefault("TransferSyntaxUID", meta.get("TransferSyntax"))
            out.append(row)
        return out

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.request("GET", f"/instances/{orthanc_id}/file"))

    def wait_for(self, predicate: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
        """See :func:`wait_for`."""
        return wait_for(predicate, timeout, interval)
