"""medversa.node.scu against a real Orthanc PACS, pynetdicom peers and dcmtk (echoscu, findscu)."""

from __future__ import annotations

import io
import logging
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medversa.node.scu import (
    AssociationFailed,
    count_study_instances,
    echo,
    find_prior_studies,
    get_study,
    move_study,
    storage_contexts,
    store_datasets,
)
from medversa.node.settings import Peer, TLSSettings

from .dicom_factory import (
    PATIENT_NAME,
    make_cr,
    make_ct_series,
    make_vl_photo,
    write_datasets,
)
from .orthanc import free_port, orthanc_server
from .reliability import record_case

CALLING = "MEDVERSA"
RECEIVER_AE = "MEDVERSA_RCV"


class Receiver:
    """A pynetdicom Storage SCP (any storage class, any transfer syntax) that keeps what it gets."""

    def __init__(self, ae_title: str = RECEIVER_AE) -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        for cx in StoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def uids(self) -> set[str]:
        with self._lock:
            return {str(ds.SOPInstanceUID) for ds in self.received}

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def receiver():
    rcv = Receiver()
    yield rcv
    rcv.stop()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, receiver):
    """One Orthanc for the module that knows the receiver as a C-MOVE destination."""
    server = orthanc_server(tmp_path_factory,
                            modalities={"receiver": (RECEIVER_AE, "127.0.0.1", receiver.port)})
    yield server
    server.stop(kill=True)


def _patient() -> str:
    return "PID-" + generate_uid()[-12:]


# -- association ------------------------------------------------------------------------------


def test_echo_works_and_wrong_port_fails_fast(orthanc):
    assert echo(orthanc.peer, CALLING) is True
    # "DicomCheckCalledAet": false - Orthanc answers whatever AE title we call it.
    assert echo(orthanc.peer.model_copy(update={"ae_title": "ANY-NAME"}), CALLING) is True
    # dcmtk agrees that the fixture's Orthanc answers C-ECHO.
    from medversa.benchmarks.peers import dcmtk

    if dcmtk("echoscu"):
        subprocess.run([dcmtk("echoscu"), "-aet", CALLING, "-aec", orthanc.aet, "127.0.0.1",
                        str(orthanc.dicom_port)], check=True, capture_output=True, timeout=20)

    dead = Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    started = time.monotonic()
    with pytest.raises(AssociationFailed) as info:
        echo(dead, CALLING, timeout=5)
    assert time.monotonic() - started < 2
    assert str(dead) in str(info.value) and "refused" in str(info.value)
    assert info.value.peer == dead
    with pytest.raises(AssociationFailed, match="no-such-host.invalid"):
        echo(Peer(ae_title="NOBODY", host="no-such-host.invalid", port=104), CALLING, timeout=5)


def test_silent_peer_times_out():
    """A peer that accepts TCP but never answers A-ASSOCIATE-RQ costs about the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the handshake; nobody ever reads
        peer = Peer(ae_title="SILENT", host="127.0.0.1", port=listener.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(AssociationFailed, match="no answer"):
            echo(peer, CALLING, timeout=1)
        assert time.monotonic() - started < 4


def test_rejection_names_reason():
    ae = AE(ae_title="STRICT")
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        with pytest.raises(AssociationFailed) as info:
            echo(Peer(ae_title="WRONG", host="127.0.0.1", port=port), CALLING, timeout=5)
        text = str(info.value)
        assert "rejected" in text and "WRONG@127.0.0.1" in text
        assert "Called AE title not recognised" in text and "Permanent" in text
        assert echo(Peer(ae_title="STRICT", host="127.0.0.1", port=port), CALLING) is True
    finally:
        server.shutdown()


def test_abort_during_negotiation_is_reported():
    ae = AE(ae_title="ABORTS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_REQUESTED, lambda event: event.assoc.abort())])
    try:
        with pytest.raises(AssociationFailed, match="aborted by ABORTS@127.0.0.1"):
            echo(Peer(ae_title="ABORTS", host="127.0.0.1", port=port), CALLING, timeout=5)
    finally:
        server.shutdown()


def test_a_abort_pdu_is_reported_with_source_and_reason():
    """A raw peer answers A-ASSOCIATE-RQ with an A-ABORT PDU (PS3.8 9.3.8: source 2, reason 0)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0]))
                time.sleep(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        peer = Peer(ae_title="RAW", host="127.0.0.1", port=listener.getsockname()[1])
        with pytest.raises(AssociationFailed, match=r"aborted by RAW@127\.0\.0\.1:\d+ \(A-ABORT source 2"):
            echo(peer, CALLING, timeout=5)
        thread.join(5)


def test_store_peer_that_stops_answering_raises_with_partial_outcomes():
    """C-STORE responses that never come: each wait is bounded by the timeout (dimse_timeout)."""
    ae = AE(ae_title="SLOW")
    ae.add_supported_context(make_cr().SOPClassUID, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    calls: list[str] = []

    def on_store(event: evt.Event) -> int:
        calls.append(event.request.AffectedSOPInstanceUID)
        if len(calls) > 1:
            time.sleep(2.5)
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        items = [make_cr(16, 16) for _ in range(3)]
        started = time.monotonic()
        with pytest.raises(AssociationFailed) as info:
            store_datasets(Peer(ae_title="SLOW", host="127.0.0.1", port=port), CALLING, items, timeout=1)
        assert time.monotonic() - started < 2.5
        assert [o.ok for o in info.value.outcomes] == [True, False]
        assert "no C-STORE response" in info.value.outcomes[1].message
        assert "SLOW@127.0.0.1" in str(info.value)
    finally:
        server.shutdown()


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate (EC P-256) made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2", "-subj", "/CN=other")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


def test_echo_over_tls_verifies_the_server(tmp_path):
    files = _make_certificates(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca_crt"]))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(str(files["server_crt"]), str(files["server_key"]))
    ae = AE(ae_title="TLSSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx)
    peer = Peer(ae_title="TLSSCP", host="127.0.0.1", port=port)
    try:
        tls = TLSSettings(enabled=True, certificate=files["client_crt"], private_key=files["client_key"],
                          ca_certificates=files["ca_crt"])
        assert echo(peer, CALLING, tls=tls, timeout=5) is True
        untrusted = tls.model_copy(update={"ca_certificates": files["other_crt"]})
        with pytest.raises(AssociationFailed, match="TLS"):
            echo(peer, CALLING, tls=untrusted, timeout=5)
    finally:
        server.shutdown()
    record_case("security", "DICOM client over TLS: server certificate from another CA",
                "refused with a TLS error; the configured CA's certificate accepted")


# -- C-STORE ----------------------------------------------------------------------------------


def test_store_native_and_jpeg2000_cr(orthanc, tmp_path):
    study = generate_uid()
    native = make_cr(64, 48, study_uid=study, instance_number=1)
    j2k = make_cr(64, 48, study_uid=study, instance_number=2)
    original = j2k.pixel_array.copy()
    try:
        j2k.compress(JPEG2000Lossless)
    except Exception as exc:  # noqa: BLE001 - no encoder: store the native one only
        pytest.skip(f"cannot build a JPEG 2000 CR here: {exc}")
    j2k_path = write_datasets([j2k], tmp_path)[0]

    outcomes = store_datasets(orthanc.peer, CALLING, [native, j2k_path])
    assert [o.ok for o in outcomes] == [True, True], outcomes
    assert [o.status for o in outcomes] == [0, 0]
    assert [o.sop_instance_uid for o in outcomes] == [native.SOPInstanceUID, j2k.SOPInstanceUID]

    stored = {row["SOPInstanceUID"]: row for row in orthanc.study_instances(study)}
    assert set(stored) == {native.SOPInstanceUID, j2k.SOPInstanceUID}
    assert stored[j2k.SOPInstanceUID]["TransferSyntaxUID"] == JPEG2000Lossless  # sent as is
    assert stored[native.SOPInstanceUID]["SOPClassUID"] == native.SOPClassUID
    back = dcmread(io.BytesIO(orthanc.instance_file(stored[j2k.SOPInstanceUID]["ID"])))
    np.testing.assert_array_equal(back.pixel_array, original)
    # The caller's data set is not changed.
    assert "TransferSyntaxUID" in native.file_meta and native.PatientID


def test_unknown_sop_class_and_unreadable_file_are_outcomes(orthanc, tmp_path):
    private = make_cr(16, 16, sop_class_uid="1.2.826.0.1.3680043.10.1462.999.1")
    private.file_meta.MediaStorageSOPClassUID = private.SOPClassUID
    alone = store_datasets(orthanc.peer, CALLING, [private])  # every context rejected
    assert len(alone) == 1 and not alone[0].ok and alone[0].status is None
    assert "rejected" in alone[0].message

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not DICOM at all")
    good = make_cr(16, 16)
    mixed = store_datasets(orthanc.peer, CALLING, [private, garbage, good])
    assert [o.ok for o in mixed] == [False, False, True], mixed
    assert "rejected" in mixed[0].message and "garbage.dcm" in mixed[1].message
    assert [row["SOPInstanceUID"] for row in orthanc.study_instances(good.StudyInstanceUID)] == [
        good.SOPInstanceUID]


def test_compressed_instance_is_decompressed_when_the_peer_only_takes_uncompressed():
    ae = AE(ae_title="PLAIN")
    ae.add_supported_context(make_cr().SOPClassUID, ["1.2.840.10008.1.2"])  # Implicit VR LE only
    got: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        j2k = make_cr(64, 64)
        native = make_cr(32, 24)
        original = j2k.pixel_array.copy()
        try:
            j2k.compress(JPEG2000Lossless)
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"cannot build a JPEG 2000 CR here: {exc}")
        outcomes = store_datasets(Peer(ae_title="PLAIN", host="127.0.0.1", port=port), CALLING, [j2k, native])
        assert [o.ok for o in outcomes] == [True, True], outcomes
        assert "decompressed from JPEG 2000" in outcomes[0].message
        np.testing.assert_array_equal(got[0].pixel_array, original)
        np.testing.assert_array_equal(got[1].pixel_array, native.pixel_array)
        assert j2k.file_meta.TransferSyntaxUID == JPEG2000Lossless  # the caller's copy is untouched
    finally:
        server.shutdown()


def test_storage_contexts_stay_within_the_limit():
    pairs = [(f"1.2.3.{i}", "1.2.840.10008.1.2.4.90") for i in range(100)]
    pairs += [(f"1.2.3.{i}", "1.2.840.10008.1.2.1") for i in range(100, 140)]
    contexts, left_out = storage_contexts(pairs)
    assert len(contexts) == 128
    assert left_out == {f"1.2.3.{i}" for i in range(128, 140)}
    small, none_left = storage_contexts([("1.2.3", "1.2.840.10008.1.2.4.90"), ("1.2.3", "1.2.840.10008.1.2")])
    assert [list(cx.transfer_syntax) for cx in small] == [
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"], ["1.2.840.10008.1.2.4.90"]]
    assert not none_left


# -- C-FIND -----------------------------------------------------------------------------------


def test_count_study_instances(pacs):
    series = make_ct_series(3, PatientID=_patient())
    assert all(o.ok for o in store_datasets(pacs.peer, CALLING, series))
    assert count_study_instances(pacs.peer, CALLING, series[0].StudyInstanceUID) == 3
    assert count_study_instances(pacs.peer, CALLING, generate_uid()) is None
    # dcmtk's findscu sees the same number.
    from medversa.benchmarks.peers import dcmtk

    findscu = dcmtk("findscu")  # dcmtk's, not pynetdicom's app of the same name
    if findscu:
        out = subprocess.run(
            [findscu, "-v", "-S", "-aet", CALLING, "-aec", pacs.aet, "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}", "-k", "NumberOfStudyRelatedInstances",
             "127.0.0.1", str(pacs.dicom_port)], capture_output=True, text=True, timeout=20)
        assert "NumberOfStudyRelatedInstances" in out.stderr + out.stdout
        assert re.search(r"IS \[3\s*\]\s+#\s+\d+, 1 NumberOfStudyRelatedInstances", out.stderr + out.stdout)


def test_find_prior_studies(pacs, caplog):
    caplog.set_level(logging.DEBUG)
    pid = _patient()

    def study(date: str, time_: str, modality: str = "CR", patient: str = pid, n: int = 1) -> list[Dataset]:
        uid = generate_uid()
        if modality == "CT":
            return make_ct_series(n, study_uid=uid, PatientID=patient, StudyDate=date, StudyTime=time_)
        return [make_cr(16, 16, study_uid=uid, instance_number=k + 1, PatientID=patient,
                        StudyDate=date, StudyTime=time_, StudyDescription=f"CR {date}") for k in range(n)]

    a = study("20230101", "120000", n=2)
    b = study("20230601", "080000", modality="CT", n=2)
    c = study("20240101", "090000")          # same day as the current study, earlier
    current = study("20240101", "120000")
    later = study("20240301", "100000")
    other = study("20230301", "100000", patient=_patient())
    everything = [ds for s in (a, b, c, current, later, other) for ds in s]
    assert all(o.ok for o in store_datasets(pacs.peer, CALLING, everything))
    uid = {name: s[0].StudyInstanceUID for name, s in
           dict(a=a, b=b, c=c, current=current, later=later).items()}

    found = find_prior_studies(pacs.peer, CALLING, patient_id=pid, modality=None, before="20240101120000",
                               exclude_study_uid=uid["current"])
    assert [m.study_instance_uid for m in found] == [uid["c"], uid["b"], uid["a"]]
    first = found[-1]
    assert (first.study_date, first.study_time, first.number_of_instances) == ("20230101", "120000", 2)
    assert first.modalities_in_study == ["CR"] and first.accession_number == "ACC1"
    assert first.study_description == "CR 20230101"
    assert found[1].modalities_in_study == ["CT"]

    only_cr = find_prior_studies(pacs.peer, CALLING, patient_id=pid, modality="CR",
                                 before="20240101120000", exclude_study_uid=uid["current"])
    assert [m.study_instance_uid for m in only_cr] == [uid["c"], uid["a"]]

    by_date = find_prior_studies(pacs.peer, CALLING, patient_id=pid, modality=None, before="20240101",
                                 exclude_study_uid=None)
    assert [m.study_instance_uid for m in by_date] == [uid["b"], uid["a"]]

    all_studies = find_prior_studies(pacs.peer, CALLING, patient_id=pid, modality=None, before=None,
                                     exclude_study_uid=uid["current"])
    assert [m.study_instance_uid for m in all_studies] == [uid["later"], uid["c"], uid["b"], uid["a"]]

    assert pid not in caplog.text and PATIENT_NAME.split("^")[0] not in caplog.text

    with pytest.raises(ValueError):
        find_prior_studies(pacs.peer, CALLING, patient_id=pid, modality=None, before="2024-01-01",
                           exclude_study_uid=None)


# -- C-MOVE and C-GET -------------------------------------------------------------------------


def _study_with_mixed_content(tmp_path: Path) -> list[Dataset]:
    study = generate_uid()
    items = make_ct_series(3, study_uid=study, PatientID=_patient())
    items.append(make_vl_photo(study_uid=study, PatientID=items[0].PatientID))
    j2k = make_cr(64, 64, study_uid=study, PatientID=items[0].PatientID)
    try:
        j2k.compress(JPEG2000Lossless)
    except Exception:  # noqa: BLE001 - no encoder: a native CR instead
        pass
    items.append(j2k)
    return items


def test_move_study_to_a_known_destination(pacs, receiver, tmp_path):
    items = _study_with_mixed_content(tmp_path)
    assert all(o.ok for o in store_datasets(pacs.peer, CALLING, items))
    outcome = move_study(pacs.peer, CALLING, items[0].StudyInstanceUID, RECEIVER_AE, timeout=30)
    assert outcome.ok, outcome
    assert (outcome.completed, outcome.failed, outcome.warning, outcome.status) == (len(items), 0, 0, 0)
    expected = {str(ds.SOPInstanceUID) for ds in items}
    assert expected <= receiver.uids()


def test_move_to_unknown_destination_is_not_ok(pacs):
    series = make_ct_series(1, PatientID=_patient())
    assert store_datasets(pacs.peer, CALLING, series)[0].ok
    outcome = move_study(pacs.peer, CALLING, series[0].StudyInstanceUID, "NOT_KNOWN", timeout=30)
    assert not outcome.ok and outcome.completed == 0
    # PS3.4 C.4.2.1.5 has 0xA801 (Move destination unknown); Orthanc 1.10.1 answers 0xC000.
    assert outcome.status in (0xA801, 0xC000)
    assert "NOT_KNOWN" in outcome.message and "Failure" in outcome.message
    assert "Unknown modality for AET: NOT_KNOWN" in pacs.log_text()


def test_get_study_delivers_every_instance(pacs, tmp_path):
    items = _study_with_mixed_content(tmp_path)
    assert all(o.ok for o in store_datasets(pacs.peer, CALLING, items))
    got: list[Dataset] = []
    outcome = get_study(pacs.peer, CALLING, items[0].StudyInstanceUID, got.append, timeout=30)
    assert outcome.ok, outcome
    assert (outcome.completed, outcome.failed) == (len(items), 0)
    assert {str(ds.SOPInstanceUID) for ds in got} == {str(ds.SOPInstanceUID) for ds in items}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in got}
    for ds in items:
        np.testing.assert_array_equal(by_uid[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array)

    def refuse_ct(ds: Dataset) -> None:
        if ds.Modality == "CT":
            raise OSError("disk full")

    partial = get_study(pacs.peer, CALLING, items[0].StudyInstanceUID, refuse_ct, timeout=30)
    assert not partial.ok
    assert (partial.completed, partial.failed) == (len(items) - 3, 3)
