"""Security with real processes: no patient identifiers in logs unless ``logging.log_phi``,
HTTP on loopback, secrets only from the environment, and DICOM TLS on the associations the
node opens (exports to dcmtk's ``storescp +tls``, prior queries and retrieves)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE, evt
from sqlalchemy import select

from medversa.benchmarks.peers import dcmtk, free_port, wait_port
from medversa.node import phi
from medversa.node.job_store import Export, ExportState, Job, JobState, Store, Study
from medversa.node.settings import NodeSettings, Peer, PeerTLS, load_settings

from . import dicom_factory as f
from .node_process import node_config, start_serve, stop_serve, wait_for
from .reliability import record_case
from .tls_certs import make_certificates

#: Identifiers no log line may carry in clear (distinct from every other test's values).
PATIENT_NAME = "Quaxley^Wilhelmina"
PATIENT_ID = "PID-PHI-TEST-73105"
ACCESSION = "ACC-PHI-55021"
SECRET = "test-phi-key-0123456789abcdef"
SCRIPTED = {"report_impression": "No acute cardiopulmonary process."}


def _serve(tmp: Path, port: int, log: Path, env: dict[str, str] | None = None, **extra: object) -> subprocess.Popen:
    """``medversa serve`` (embedded worker, tiny preset, planted answers), output into ``log``."""
    script = tmp / "scripted.yaml"
    script.write_text(yaml.safe_dump(SCRIPTED))
    settings: dict[str, object] = {
        "model": {"preset": "tiny", "scripted_answers": str(script)},
        "routing": [{"name": "security test", "modality": "CR", "tasks": ["report_impression"]}],
        "logging": {"json_format": True, "level": "INFO"},
    }
    settings.update(extra)
    return start_serve(node_config(tmp, port, **settings), log, env)


def _send(port: int, datasets: list) -> None:
    ae = AE("PACS")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def _job_state(store: Store) -> JobState | None:
    with store.session() as s:
        job = s.scalars(select(Job)).first()
        return job.state if job else None


def _listening_addresses(port: int) -> list[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp, state 0A = LISTEN)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _run_one_study(tmp: Path, log_phi: bool) -> tuple[str, Path, NodeSettings]:
    """Serve one study with known identifiers; return the whole log, the data folder, the settings."""
    port = free_port()
    log = tmp / "serve.log"
    node = _serve(tmp, port, log, env={phi.SECRET_ENV: SECRET}, logging={"json_format": True, "level": "INFO",
                                                                           "log_phi": log_phi})
    settings = load_settings(tmp / "medversa.yaml")
    store = Store(f"sqlite:///{tmp / 'node' / 'medversa.db'}")
    try:
        wait_port(port, 90)
        if not log_phi:
            # Metrics and health stay on loopback unless http.bind says otherwise.
            assert NodeSettings().http.bind == "127.0.0.1"
            wait_for(lambda: bool(_listening_addresses(settings.http.port)), 30, "no HTTP listener", log)
            assert _listening_addresses(settings.http.port) == ["127.0.0.1"]
        uid = pydicom.uid.generate_uid()
        _send(port, [f.make_cr(64, 64, study_uid=uid, PatientName=PATIENT_NAME, PatientID=PATIENT_ID,
                               AccessionNumber=ACCESSION) for _ in range(2)])
        wait_for(lambda: _job_state(store) is JobState.DONE, 180, "the study was not processed", log)
    finally:
        stop_serve(node)
    return log.read_text(), tmp / "node", settings


def _clear_values() -> list[str]:
    return [PATIENT_ID, ACCESSION, "Quaxley", "Wilhelmina"]


def test_logs_carry_only_keyed_hashes_of_patient_identifiers_and_http_stays_on_loopback(tmp_path):
    text, data_dir, _ = _run_one_study(tmp_path, log_phi=False)
    key = phi.PHIPolicy(log_phi=False, key=SECRET.encode())
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["message"] is not None for line in lines)  # JSON lines
    leaked = [value for value in _clear_values() if value in text]
    assert not leaked, f"patient identifiers in the log: {leaked}"
    assert key.pseudonym(PATIENT_ID) in text and key.pseudonym(PATIENT_NAME) in text
    assert key.pseudonym(ACCESSION) in text
    # The job store and the broker keep no identifier either (the spool and results hold DICOM).
    for path in data_dir.iterdir():
        if path.is_file():
            blob = path.read_bytes()
            assert not [v for v in _clear_values() if v.encode() in blob], path.name
    with Store(f"sqlite:///{data_dir / 'medversa.db'}").session() as s:
        assert s.scalars(select(Study.patient_ref)).one() == key.pseudonym(PATIENT_ID)
    record_case("security", "patient identifiers in logs (log_phi off)", "only keyed hashes logged; none in the "
                "job store; HTTP on 127.0.0.1", log_lines=len(text.splitlines()), clear_identifiers_found=0)


def test_log_phi_on_writes_identifiers_into_the_log_but_not_into_the_job_store(tmp_path):
    text, data_dir, _ = _run_one_study(tmp_path, log_phi=True)
    assert PATIENT_ID in text and PATIENT_NAME in text and ACCESSION in text
    with Store(f"sqlite:///{data_dir / 'medversa.db'}").session() as s:
        assert s.scalars(select(Study.patient_ref)).one() == phi.PHIPolicy(False, SECRET.encode()).pseudonym(PATIENT_ID)
    record_case("security", "patient identifiers in logs (log_phi on)", "identifiers logged in clear; job store "
                "still hashed", log_lines=len(text.splitlines()))


def test_the_hashing_key_comes_from_the_environment_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv(phi.SECRET_ENV, raising=False)
    first = phi.load_key(tmp_path)
    path = tmp_path / phi.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 64
    assert phi.load_key(tmp_path) == first  # made once, then reused
    monkeypatch.setenv(phi.SECRET_ENV, SECRET)
    assert phi.load_key(tmp_path) == SECRET.encode()
    other = phi.PHIPolicy(False, first).pseudonym(PATIENT_ID)
    assert other != phi.PHIPolicy(False, SECRET.encode()).pseudonym(PATIENT_ID) and len(other) == phi.DIGITS


def test_a_config_file_with_a_password_is_refused(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MEDVERSA_") and n != "MEDVERSA_RELIABILITY_LOG"]:
        monkeypatch.delenv(name)  # settings of the calling shell must not leak in
    path = tmp_path / "medversa.yaml"
    path.write_text(yaml.safe_dump({"broker_url": "redis://:hunter2@redis:6379/0"}))
    with pytest.raises(ValueError, match=r"broker_url: holds a password.*MEDVERSA_BROKER_URL"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"database_url": "postgresql://medversa:hunter2@db/medversa"}))
    with pytest.raises(ValueError, match=r"database_url: holds a password"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"broker_url": "redis://127.0.0.1:6379/0"}))
    assert load_settings(path).broker_url == "redis://127.0.0.1:6379/0"  # no password: fine
    monkeypatch.setenv("MEDVERSA_BROKER_URL", "redis://:hunter2@redis:6379/0")
    assert load_settings(path).broker_url == "redis://:hunter2@redis:6379/0"  # the environment: fine
    for not_a_name in ("hunter2 is my passphrase", "hunter2"):
        with pytest.raises(ValueError, match="not an environment variable name"):
            PeerTLS(private_key_password_env=not_a_name)
    record_case("security", "secrets in the configuration file", "refused, naming the environment variable")


# -- DICOM TLS on the associations the node opens ---------------------------------------------


@pytest.fixture()
def certs(tmp_path) -> dict[str, Path]:
    """CA, server and client certificates, plus the client key encrypted with a passphrase."""
    files = make_certificates(tmp_path / "certs")
    encrypted = tmp_path / "certs" / "client-encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(files["client.key"]), "-aes256", "-passout", "pass:tls-pass-81",
                    "-out", str(encrypted)], check=True, capture_output=True, timeout=60)
    return {**files, "client-encrypted.key": encrypted}


def _tls_storescp(certs: dict[str, Path], out: Path) -> tuple[subprocess.Popen, int]:
    """dcmtk's storescp speaking DICOM TLS only, requiring a client certificate from our CA."""
    storescp = dcmtk("storescp")
    if storescp is None:
        pytest.skip("dcmtk's storescp is not installed")
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen([storescp, "+tls", str(certs["server.key"]), str(certs["server.crt"]), "-pw",
                             "+cf", str(certs["ca.crt"]), "-aet", "TLSPACS", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30)
    return proc, port


@pytest.fixture()
def tls_receivers(certs, tmp_path) -> Iterator[list[tuple[int, Path]]]:
    started = [_tls_storescp(certs, tmp_path / f"received{i}") for i in range(2)]
    yield [(port, tmp_path / f"received{i}") for i, (_, port) in enumerate(started)]
    for proc, _ in started:
        proc.terminate()
        proc.wait(10)


def test_results_go_to_a_tls_destination_and_a_plain_try_of_a_tls_only_peer_stays_pending(
        tmp_path, certs, tls_receivers):
    (secure_port, secure_out), (plain_port, plain_out) = tls_receivers
    secure = {"ae_title": "TLSPACS", "host": "127.0.0.1", "port": secure_port,
              "tls": {"enabled": True, "ca_certificates": str(certs["ca.crt"]),
                      "certificate": str(certs["client.crt"]), "private_key": str(certs["client-encrypted.key"]),
                      "private_key_password_env": "MEDVERSA_TEST_KEY_PASSWORD"}}
    plain = f"TLSPACS@127.0.0.1:{plain_port}"  # short form: no TLS settings
    port = free_port()
    log = tmp_path / "serve.log"
    node = _serve(tmp_path, port, log, env={"MEDVERSA_TEST_KEY_PASSWORD": "tls-pass-81"},
                  export={"destinations": [secure, plain], "backoff_initial_s": 60})
    store = Store(f"sqlite:///{tmp_path / 'node' / 'medversa.db'}")

    def exports() -> dict[int, tuple[ExportState, int, str]]:
        with store.session() as s:
            return {int(e.destination.rsplit(":", 1)[1]): (e.state, e.attempts, e.last_status)
                    for e in s.scalars(select(Export))}

    try:
        wait_port(port, 90)
        uid = pydicom.uid.generate_uid()
        _send(port, [f.make_cr(64, 64, study_uid=uid)])
        wait_for(lambda: exports().get(secure_port, (None,))[0] is ExportState.DELIVERED
              and exports().get(plain_port, (None, 0))[1] >= 1, 180, "exports not tried", log)
    finally:
        stop_serve(node)
    received = [pydicom.dcmread(p) for p in secure_out.iterdir()]
    # The SR (TID 1500) and its text report (TID 2000), both SR documents of the study.
    assert {r.Modality for r in received} == {"SR"} and {r.StudyInstanceUID for r in received} == {uid}
    assert len([r for r in received if r.ConceptNameCodeSequence[0].CodeValue == "126000"]) == 1
    state, attempts, status = exports()[plain_port]
    assert state is ExportState.PENDING and attempts == 1, (state, attempts, status)  # tried once, not twice
    assert "TLS" in status and "without an A-ASSOCIATE response" in status, status
    assert not list(plain_out.iterdir())
    assert _job_state(store) is JobState.EXPORTING  # done only once every destination has it
    text = log.read_text()
    assert f"to TLSPACS@127.0.0.1:{plain_port} failed (try 1)" in text and "check its tls settings" in text
    record_case("security", "export over DICOM TLS (dcmtk storescp +tls, mutual authentication)",
                "SR delivered; passphrase from the environment", delivered=1)
    record_case("security", "plain association to a TLS-only export destination", "export stays pending, "
                "reason logged and stored", attempts=attempts)


class _TLSQueryRetrieveSCP:
    """A pynetdicom Study Root C-FIND/C-GET SCP that speaks TLS only and holds one prior study."""

    def __init__(self, certs: dict[str, Path], prior: list[pydicom.Dataset]) -> None:
        import ssl

        from pynetdicom import StoragePresentationContexts
        from pynetdicom.sop_class import (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
        )

        self.prior = prior
        self.requests: list[str] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs["ca.crt"]))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(certs["server.crt"]), str(certs["server.key"]))
        ae = AE("TLSQR")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, scu_role=True, scp_role=True)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=context,
                                      evt_handlers=[(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)])

    def _find(self, event: evt.Event) -> Iterator[tuple[int, pydicom.Dataset | None]]:
        self.requests.append("C-FIND")
        first = self.prior[0]
        if event.identifier.QueryRetrieveLevel == "STUDY" and event.identifier.PatientID == first.PatientID:
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            for keyword in ("PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber"):
                setattr(answer, keyword, first.get(keyword, ""))
            answer.ModalitiesInStudy = "CR"
            answer.NumberOfStudyRelatedInstances = len(self.prior)
            yield 0xFF00, answer
        yield 0x0000, None

    def _get(self, event: evt.Event) -> Iterator[int | tuple[int, pydicom.Dataset]]:
        self.requests.append("C-GET")
        yield len(self.prior)
        for ds in self.prior:
            yield 0xFF00, ds

    def stop(self) -> None:
        self.server.shutdown()


def test_prior_query_and_retrieve_use_the_pacs_tls_settings(tmp_path, certs):
    from medversa.node.node_context import NodeContext
    from medversa.node.priors import fetch_prior

    prior_uid = pydicom.uid.generate_uid()
    prior = [f.make_cr(32, 32, study_uid=prior_uid, StudyDate="20230101") for _ in range(2)]
    pacs = _TLSQueryRetrieveSCP(certs, prior)
    tls = {"enabled": True, "ca_certificates": str(certs["ca.crt"]), "certificate": str(certs["client.crt"]),
           "private_key": str(certs["client.key"])}
    try:
        current = [f.make_cr(32, 32, StudyDate="20240101")]
        secure = NodeContext(load_settings(None, data_dir=tmp_path / "secure", **{
            "pacs.peer": {"ae_title": "TLSQR", "host": "127.0.0.1", "port": pacs.port, "tls": tls},
            "pacs.retrieve": "get", "pacs.query_timeout_s": 10, "pacs.retrieve_timeout_s": 30}))
        fetched = fetch_prior(secure, current)
        datasets, note = fetched.datasets, fetched.note
        assert datasets is not None, note
        assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(str(ds.SOPInstanceUID) for ds in prior)
        assert pacs.requests == ["C-FIND", "C-FIND", "C-GET"]  # studies, their series (none: whole study)

        plain = NodeContext(load_settings(None, data_dir=tmp_path / "plain", **{
            "pacs.peer": Peer(ae_title="TLSQR", host="127.0.0.1", port=pacs.port).model_dump(),
            "pacs.query_timeout_s": 5}))
        fetched = fetch_prior(plain, current)
        datasets, note = fetched.datasets, fetched.note
        assert datasets is None and "prior query failed" in note and "TLS" in note
        assert pacs.requests == ["C-FIND", "C-FIND", "C-GET"]  # the plain try never reached the service
    finally:
        pacs.stop()
    record_case("security", "prior C-FIND and C-GET over DICOM TLS (mutual authentication)",
                "prior retrieved; a plain try of the TLS-only PACS skipped with its reason",
                instances=len(prior))
