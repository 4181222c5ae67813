"""The Orthanc auto-routing script (deploy/orthanc/autoroute.lua) in a real Orthanc 1.10.1.

Orthanc reads deploy/orthanc/orthanc.json as written (comments included), with only the values a
test must change replaced in the text: free ports, storage in tmp_path, no authentication,
localhost only, StableAge 1 s, and the node entry pointing at a pynetdicom Storage SCP with AE
title MEDVERSA that records every SOP Instance UID it receives.

Checked: the original images of a stable study reach the node; the node's own results never go
back to it, whichever rule identifies them (sent from the node's AE title, a series description
marked "MedVersa", the node's Manufacturer, a result SOP class); originals are not sent twice when
the study becomes stable again; a late original image is forwarded alone; a failed forwarding job is resubmitted
"MaxRetries" times and then left to an operator; without any
"MedversaRouting" or "UserMetadata" settings the script's defaults apply. Self-contained (no
shared Orthanc fixture); skipped where /usr/sbin/Orthanc is not installed.
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


def set_value(text: str, key: str, value: Any) -> str:
    """Replace the JSON value of top-level ``key`` in an Orthanc configuration text (comments kept)."""
    match = re.search(rf'^  "{re.escape(key)}"\s*:\s*', text, re.MULTILINE)
    assert match, f"{key} is not in {ORTHANC_CONFIG}"
    _, end = json.JSONDecoder().raw_decode(text, match.end())
    return text[:match.end()] + json.dumps(value) + text[end:]


def hide_key(text: str, key: str) -> str:
    """Rename a top-level key so that Orthanc (which ignores unknown keys) sees it absent."""
    renamed, count = re.subn(rf'^  "{re.escape(key)}"', f'  "Unused{key}"', text, flags=re.MULTILINE)
    assert count == 1, key
    return renamed


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

    def __init__(self, workdir: Path, node_port: int, routing: bool = True, user_metadata: bool = True) -> None:
        text = ORTHANC_CONFIG.read_text()
        self.http_port, self.dicom_port = _free_port(), _free_port()
        storage = workdir / "storage"
        for key, value in {
            "Name": "medversa autoroute test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "RegisteredUsers": {},
            "StableAge": 1, "SaveJobs": False, "Plugins": [], "LuaScripts": [str(SCRIPT)],
            "DicomModalities": {"medversa": [NODE_AET, "127.0.0.1", node_port]},
        }.items():
            text = set_value(text, key, value)
        if not routing:
            text = hide_key(text, "MedversaRouting")
        if not user_metadata:
            text = hide_key(text, "UserMetadata")
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(text)
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
    yield from _orthanc_at(tmp_path, node.port, **kwargs)


def _orthanc_at(tmp_path: Path, node_port: int, **kwargs: Any) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path, node_port, **kwargs)
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
    made_by_node = _cr(study_uid, generate_uid(), 1, SeriesDescription="Overlay", Manufacturer="medversa-node",
                       series_number=9702)
    late = _cr(study_uid, generate_uid(), 1, SeriesDescription="Chest LAT", series_number=2)
    orthanc.upload(marked)
    orthanc.upload(made_by_node)
    orthanc.upload(text_sr)
    orthanc.c_store(from_node, calling_aet=NODE_AET)
    orthanc.upload(late)

    _wait(lambda: str(late.SOPInstanceUID) in node.uids(), 15, "the late original image at the node")
    _wait(lambda: _counts(orthanc.routing_lines(study_id), "result object") >= 4, 15,
          "the routing script saw the four results")
    time.sleep(1.5)  # anything wrongly forwarded with or after the late image would be here now

    received = collections.Counter(node.uids())
    assert received == collections.Counter(original_uids + [str(late.SOPInstanceUID)]), received
    lines = orthanc.routing_lines(study_id)
    assert _counts(lines, "result object") == 4, lines
    assert _counts(lines, "already forwarded") >= 2, lines
    # The forwarded mark is persistent instance metadata (declared in UserMetadata).
    instance_ids = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
                    for i in orthanc.get(f"/studies/{study_id}/instances")}
    marks = {uid: orthanc.get(f"/instances/{instance_ids[uid]}/metadata") for uid in instance_ids}
    for uid in original_uids + [str(late.SOPInstanceUID)]:
        assert "MedversaForwarded" in marks[uid], (uid, marks[uid])
    for ds in (marked, made_by_node, text_sr, from_node):
        assert "MedversaForwarded" not in marks[str(ds.SOPInstanceUID)]
    assert "Lua: Error" not in orthanc.log() and "Error while processing Lua" not in orthanc.log(), orthanc.log()


def test_defaults_apply_without_routing_settings_or_user_metadata(tmp_path: Path, node: RecordingSCP):
    for orthanc in _orthanc(tmp_path, node, routing=False, user_metadata=False):
        assert "forwarded marks kept in memory only" in orthanc.log()
        study_uid, series_uid = generate_uid(), generate_uid()
        original = _cr(study_uid, series_uid, 1)
        study_id = orthanc.upload(original)["ParentStudy"]
        _wait(lambda original=original: str(original.SOPInstanceUID) in node.uids(), 15,
              "the original image at the node")

        orthanc.c_store(_cr(study_uid, generate_uid(), 1, SeriesDescription="Chest PA"), calling_aet=NODE_AET)
        _wait(lambda orthanc=orthanc, study_id=study_id: _counts(orthanc.routing_lines(study_id), "result object") >= 1,
              15, "the routing script saw the result")
        time.sleep(1.0)
        assert node.uids() == [str(original.SOPInstanceUID)]
        assert _counts(orthanc.routing_lines(study_id), "already forwarded") == 1


def test_failed_forwarding_is_resubmitted_then_left_to_an_operator(tmp_path: Path):
    unreachable_node = _free_port()  # nothing listens there: every C-STORE association fails
    for orthanc in _orthanc_at(tmp_path, unreachable_node):
        study_id = orthanc.upload(_cr(generate_uid(), generate_uid(), 1))["ParentStudy"]
        _wait(lambda orthanc=orthanc, study_id=study_id: any(
                  "ERROR: job" in line for line in orthanc.routing_lines(study_id)),
              20, "the routing script giving up on the job")
        lines = orthanc.routing_lines(study_id)
        assert [line for line in lines if "resubmitting" in line] == [
            line for line in lines if re.search(r"failed; resubmitting \([123]/3\)", line)]
        assert sum("resubmitting" in line for line in lines) == 3, lines
        assert "failed 4 time(s)" in lines[-1]
        jobs = orthanc.get("/jobs?expand")
        assert [job["State"] for job in jobs] == ["Failure"], jobs
