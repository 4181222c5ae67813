"""The Orthanc auto-routing script (deploy/orthanc/autoroute.lua) in a real Orthanc 1.10.1.

Orthanc runs with deploy/orthanc/orthanc.json, changed only where a test must (free ports,
storage in tmp_path, no authentication, localhost only, StableAge 1 s, the node entry pointing
at a pynetdicom Storage SCP with AE title MEDVERSA that records every SOP Instance UID it gets).

Checked: the original images of a stable study reach the node; the node's own results never go
back to it, whichever rule identifies them (sent from the node's AE title, a series description
marked "MedVersa", a result SOP class); originals are not sent twice when the study becomes
stable again; a late original image is forwarded alone. Self-contained (no shared Orthanc
fixture); skipped where /usr/sbin/Orthanc is not installed.
"""

from __future__ import annotations

import collections
import io
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

from .dicom_factory import base_dataset, make_cr

REPO = Path(__file__).resolve().parents[1]
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_CONFIG = REPO / "deploy" / "orthanc" / "orthanc.json"
SCRIPT = REPO / "deploy" / "orthanc" / "autoroute.lua"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
RESULT_DESCRIPTION = "MedVersa report (AI-generated, unverified)"
NODE_AET = "MEDVERSA"

pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc is not installed (/usr/sbin/Orthanc)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        time.sleep(interval)


def read_commented_json(path: Path) -> dict[str, Any]:
    """An Orthanc configuration file: JSON with full-line ``//`` comments."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("//"))
    return json.loads(text)


@dataclass
class RecordingSCP:
    """The node's stand-in: a Storage SCP that accepts everything and records what arrives."""

    ae_title: str = NODE_AET
    received: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        self.port = _free_port()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def uids(self) -> list[str]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self._server.shutdown()


class Orthanc:
    """One Orthanc process on free ports, its storage and log in ``workdir``."""

    def __init__(self, workdir: Path, node_port: int, routing: dict[str, Any] | str | None = "deploy",
                 user_metadata: bool = True) -> None:
        config = read_commented_json(ORTHANC_CONFIG)
        self.http_port, self.dicom_port = _free_port(), _free_port()
        storage = workdir / "storage"
        config.update({
            "Name": "medversa autoroute test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "RegisteredUsers": {},
            "StableAge": 1, "SaveJobs": False, "Plugins": [], "LuaScripts": [str(SCRIPT)],
            "DicomModalities": {"medversa": [NODE_AET, "127.0.0.1", node_port]},
        })
        if routing is None:
            del config["MedversaRouting"]
        elif routing != "deploy":
            config["MedversaRouting"] = routing
        if not user_metadata:
            del config["UserMetadata"]
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "orthanc.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen([str(ORTHANC), str(self.config_path)], stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=workdir)
        self.base = f"http://127.0.0.1:{self.http_port}"
        try:
            _wait(self._up, 20, "Orthanc answering GET /system")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.process.returncode}:\n{self.log()}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, uri: str) -> Any:
        with urllib.request.urlopen(self.base + uri, timeout=5) as response:
            return json.loads(response.read())

    def upload(self, ds: Dataset) -> dict[str, Any]:
        """POST /instances: stored through the REST API (no RemoteAET metadata)."""
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        request = urllib.request.Request(self.base + "/instances", data=buffer.getvalue(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["Status"] == "Success", answer
        return answer

    def c_store(self, ds: Dataset, calling_aet: str) -> None:
        """C-STORE from ``calling_aet`` (Orthanc records it as the instance's RemoteAET)."""
        ae = AE(ae_title=calling_aet)
        ae.add_requested_context(str(ds.SOPClassUID), ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title="ORTHANC")
        assert assoc.is_established, "Orthanc refused the association"
        try:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, status
        finally:
            assoc.release()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def routing_lines(self, study_id: str) -> list[str]:
        return re.findall(rf"MedversaRouting: study {re.escape(study_id)}: ([^\n]*)", self.log())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def _counts(lines: list[str], what: str) -> int:
    return sum(int(m) for line in lines for m in re.findall(rf"(\d+) {what}", line))


@pytest.fixture()
def node() -> Iterator[RecordingSCP]:
    scp = RecordingSCP()
    yield scp
    scp.stop()


def _orthanc(tmp_path: Path, node: RecordingSCP, **kwargs: Any) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path, node.port, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def orthanc(tmp_path: Path, node: RecordingSCP) -> Iterator[Orthanc]:
    yield from _orthanc(tmp_path, node)


def _cr(study_uid: str, series_uid: str, number: int, **attrs: Any) -> Dataset:
    return make_cr(32, 32, study_uid=study_uid, series_uid=series_uid, instance_number=number, **attrs)


def _text_sr(study_uid: str) -> Dataset:
    """A Basic Text SR with an innocent description: excluded by its SOP class alone."""
    ds = base_dataset(BASIC_TEXT_SR, "SR", study_uid=study_uid, series_number=50)
    ds.SeriesDescription = "Radiology report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    return ds


def test_stable_study_originals_reach_the_node_once_and_results_never(orthanc: Orthanc, node: RecordingSCP):
    assert "MedversaRouting: loaded" in orthanc.log()
    study_uid, series_uid = generate_uid(), generate_uid()
    originals = [_cr(study_uid, series_uid, n, SeriesDescription="Chest PA") for n in (1, 2)]
    study_id = orthanc.upload(originals[0])["ParentStudy"]
    orthanc.upload(originals[1])
    original_uids = [str(ds.SOPInstanceUID) for ds in originals]

    _wait(lambda: set(original_uids) <= set(node.uids()), 15, "both original images at the node")

    # The node's results come back into the same study, each caught by a different rule, and a
    # late original image arrives with them.
    marked = _cr(study_uid, generate_uid(), 1, SeriesDescription=RESULT_DESCRIPTION, series_number=9703)
    text_sr = _text_sr(study_uid)
    from_node = _cr(study_uid, generate_uid(), 1, SeriesDescription="Chest PA", series_number=9705)
    late = _cr(study_uid, generate_uid(), 1, SeriesDescription="Chest LAT", series_number=2)
    orthanc.upload(marked)
    orthanc.upload(text_sr)
    orthanc.c_store(from_node, calling_aet=NODE_AET)
    orthanc.upload(late)

    _wait(lambda: str(late.SOPInstanceUID) in node.uids(), 15, "the late original image at the node")
    _wait(lambda: _counts(orthanc.routing_lines(study_id), "result object") >= 3, 15,
          "the routing script saw the three results")
    time.sleep(1.5)  # anything wrongly forwarded with or after the late image would be here now

    received = collections.Counter(node.uids())
    assert received == collections.Counter(original_uids + [str(late.SOPInstanceUID)]), received
    lines = orthanc.routing_lines(study_id)
    assert _counts(lines, "result object") == 3, lines
    assert _counts(lines, "already forwarded") >= 2, lines
    # The forwarded mark is persistent instance metadata (declared in UserMetadata).
    instance_ids = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in orthanc.get(f"/studies/{study_id}/instances")}
    marks = {uid: orthanc.get(f"/instances/{instance_ids[uid]}/metadata") for uid in instance_ids}
    for uid in original_uids + [str(late.SOPInstanceUID)]:
        assert "MedversaForwarded" in marks[uid], (uid, marks[uid])
    for ds in (marked, text_sr, from_node):
        assert "MedversaForwarded" not in marks[str(ds.SOPInstanceUID)]
    assert "Lua: Error" not in orthanc.log() and "Error while processing Lua" not in orthanc.log(), orthanc.log()


def test_defaults_apply_without_routing_settings_or_user_metadata(tmp_path: Path, node: RecordingSCP):
    for orthanc in _orthanc(tmp_path, node, routing=None, user_metadata=False):
        assert "forwarded marks kept in memory only" in orthanc.log()
        study_uid, series_uid = generate_uid(), generate_uid()
        original = _cr(study_uid, series_uid, 1)
        study_id = orthanc.upload(original)["ParentStudy"]
        _wait(lambda: str(original.SOPInstanceUID) in node.uids(), 15, "the original image at the node")

        orthanc.c_store(_cr(study_uid, generate_uid(), 1, SeriesDescription="Chest PA"), calling_aet=NODE_AET)
        _wait(lambda: _counts(orthanc.routing_lines(study_id), "result object") >= 1, 15,
              "the routing script saw the result")
        time.sleep(1.0)
        assert node.uids() == [str(original.SOPInstanceUID)]
        assert _counts(orthanc.routing_lines(study_id), "already forwarded") == 1
