"""The Storage SCP over loopback with real peers (dcmtk storescu/echoscu, pynetdicom)."""

import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import func, select

from medversa.benchmarks.peers import free_port
from medversa.node.job_store import AuditEvent, Instance, Store, Study, StudyState
from medversa.node.scp import StorageSCP, record_instance, record_instances
from medversa.node.settings import load_settings
from medversa.node.spool import Spool, SpoolFull

from . import dicom_factory as f
from .dicom_tools import need_tool
from .node_process import mount_tmpfs, statuses, storescu, unmount
from .reliability import record_case


@pytest.fixture()
def scp(tmp_path):
    def start(**flags):
        settings = load_settings(None, data_dir=tmp_path / "data", **{"scp.port": free_port(), "scp.bind": "127.0.0.1",
                                                                       **flags})
        store = Store(settings.db_url)
        spool = Spool(settings.spool_dir)
        server = StorageSCP(settings, store, spool)
        server.start()
        started.append(server)
        return server
    started: list[StorageSCP] = []
    yield start
    for server in started:
        server.stop()


def _count(server: StorageSCP, model) -> int:
    server.flush()
    with server.store.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_echo_and_store_with_storescu_spools_and_records(scp, tmp_path):
    server = scp()
    study = f.make_cr(64, 64)
    paths = f.write_datasets([study, f.make_cr(64, 64, study_uid=study.StudyInstanceUID)], tmp_path / "in")
    echo = subprocess.run([need_tool("echoscu"), "-aec", "MEDVERSA", "127.0.0.1", str(server.port)],
                          capture_output=True, timeout=30)
    assert echo.returncode == 0
    sent = subprocess.run([need_tool("storescu"), "-aet", "PACS", "-aec", "MEDVERSA", "127.0.0.1", str(server.port),
                           *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert _count(server, Instance) == 2 and _count(server, Study) == 1
    spooled = sorted(server.spool.root.rglob("*.dcm"))
    assert len(spooled) == 2
    assert {dcmread(p).SOPInstanceUID for p in spooled} == {dcmread(p).SOPInstanceUID for p in paths}
    assert not list(server.spool.root.rglob("*.partial"))


def test_a_resent_instance_is_idempotent(scp, tmp_path):
    server = scp()
    path = f.write_datasets([f.make_cr(32, 32)], tmp_path / "in")[0]
    for _ in range(2):
        subprocess.run([need_tool("storescu"), "-aec", "MEDVERSA", "127.0.0.1", str(server.port), str(path)],
                       capture_output=True, timeout=60, check=True)
    assert _count(server, Instance) == 1
    with server.store.session() as s:
        assert s.scalars(select(Study)).one().pending_instances == 1


def test_a_calling_ae_outside_the_allow_list_is_rejected_and_audited(scp, tmp_path):
    need_tool("storescu")
    server = scp(**{"scp.allowed_calling_aes": ["GOODPACS"]})
    path = f.write_datasets([f.make_cr(32, 32)], tmp_path / "in")[0]
    bad = subprocess.run([need_tool("storescu"), "-aet", "EVIL", "-aec", "MEDVERSA", "127.0.0.1", str(server.port),
                          str(path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in (bad.stdout + bad.stderr)
    good = subprocess.run([need_tool("storescu"), "-aet", "GOODPACS", "-aec", "MEDVERSA", "127.0.0.1", str(server.port),
                           str(path)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0
    with server.store.session() as s:
        rejected = s.scalars(select(AuditEvent).where(AuditEvent.outcome == "rejected")).all()
    assert len(rejected) == 1 and "EVIL" in rejected[0].peer
    record_case("security", "calling AE title outside the allow-list (dcmtk storescu)",
                "association rejected (calling AE title not recognised) and audited; an allowed AE stores",
                instances_sent=2, acknowledged=1, lost=0)


def test_an_unknown_sop_class_is_refused_at_negotiation(scp):
    server = scp()
    ae = AE("PACS")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage: not ours
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDVERSA")
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == ["1.2.840.10008.1.1"]
    assert [c.abstract_syntax for c in assoc.rejected_contexts] == ["1.2.840.10008.5.1.4.1.1.4"]
    assoc.release()


def _send(port: int, ds, sop_class: str | None = None) -> int:
    ae = AE("PACS")
    ae.add_requested_context(sop_class or ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERSA")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def test_a_data_set_without_its_uids_gets_cannot_understand(scp):
    server = scp()
    ds = f.make_cr(32, 32)
    del ds.StudyInstanceUID
    assert _send(server.port, ds) == 0xC000
    assert _count(server, Instance) == 0 and not list(server.spool.root.rglob("*.dcm"))


def test_a_full_disk_answers_out_of_resources_and_leaves_nothing(scp, monkeypatch):
    server = scp()

    def full(*args, **kwargs):
        raise SpoolFull(28, "no space")

    monkeypatch.setattr(server.spool, "commit", full)
    assert _send(server.port, f.make_cr(32, 32)) == 0xA700
    assert _count(server, Instance) == 0


def test_a_disk_full_under_the_job_store_too_still_answers_out_of_resources(scp, tmp_path):
    """Spool and job store on one disk that fills up (a real ENOSPC): refusals cannot be audited
    any more, yet each sender still gets 0xA700, never an unexpected-error status."""
    data = tmp_path / "data"
    mount_tmpfs(data, "4m")
    try:
        server = scp(**{"retention.refuse_above": 1.0})
        (data / "filler.bin").write_bytes(bytes(3 * 1024 * 1024))
        paths = f.write_datasets([f.make_cr(256, 256) for _ in range(12)], tmp_path / "in")
        got = statuses(storescu(server.port, *paths, options=("--no-halt",)))
        assert len(got) == len(paths) and 0xA700 in got and set(got) <= {0, 0xA700}, got
        assert not list((data / "spool").rglob("*.partial"))
        server.stop()
    finally:
        unmount(data)
    record_case("fault", "spool and job store on one full disk (4 MiB tmpfs)",
                "0xA700 for what did not fit, though the refusal could not be audited; nothing half-written",
                instances_sent=len(paths), acknowledged=got.count(0), refused=got.count(0xA700), lost=0,
                status="0xA700")


def test_associations_are_refused_above_the_disk_refusal_level(scp, monkeypatch):
    server = scp(**{"retention.refuse_above": 0.95})
    monkeypatch.setattr(server.spool, "disk_fill", lambda: 0.99)
    ae = AE("PACS")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MEDVERSA")
    assert assoc.is_rejected
    with server.store.session() as s:
        assert "disk" in s.scalars(select(AuditEvent).where(AuditEvent.outcome == "rejected")).one().detail


def _store_with_a_processed_study(tmp_path):
    """A job store holding one recorded study whose job is done, and that study's instance."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    first = f.make_cr(16, 16)
    record_instance(store, first, "a.dcm", 1, "PACS")
    with store.session() as s:
        study = s.scalars(select(Study)).one()
        study.state, study.pending_instances = StudyState.DONE, 0
    return store, first


def test_a_new_instance_after_processing_reopens_the_study(tmp_path):
    store, first = _store_with_a_processed_study(tmp_path)
    late = f.make_cr(16, 16, study_uid=first.StudyInstanceUID)
    assert record_instance(store, late, "b.dcm", 1, "PACS")
    with store.session() as s:
        study = s.scalars(select(Study)).one()
        assert study.state is StudyState.RECEIVING and study.pending_instances == 1


def test_one_batch_records_new_studies_duplicates_and_reopened_studies_like_one_by_one(tmp_path):
    """The recorder writes a batch with two queries and one flush: it must decide exactly as
    instance-by-instance recording does (new vs duplicate, counts, reopening, one audit row each)."""
    store, done = _store_with_a_processed_study(tmp_path)
    fresh_a = f.make_cr(16, 16)
    fresh_b = f.make_cr(16, 16, study_uid=fresh_a.StudyInstanceUID)
    late = f.make_cr(16, 16, study_uid=done.StudyInstanceUID)
    received = datetime(2026, 1, 2, 3, 4, 5)  # the receipt time the SCP stamps, not the time of writing
    batch = [(fresh_a, "a.dcm", 1, "PACS"), (fresh_b, "b.dcm", 1, "PACS", received), (fresh_a, "a.dcm", 1, "PACS"),
             (late, "late.dcm", 1, "PACS"), (done, "a.dcm", 1, "PACS")]
    assert record_instances(store, batch) == [True, True, False, True, False]
    with store.session() as s:
        studies = {st.study_instance_uid: st for st in s.scalars(select(Study))}
        assert len(studies) == 2
        assert studies[str(fresh_a.StudyInstanceUID)].pending_instances == 2
        reopened = studies[str(done.StudyInstanceUID)]
        assert reopened.state is StudyState.RECEIVING and reopened.pending_instances == 1
        assert len(s.scalars(select(Instance)).all()) == 4
        by_uid = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        assert by_uid[str(fresh_b.SOPInstanceUID)].received_at == received
        assert by_uid[str(fresh_a.SOPInstanceUID)].received_at > received  # unstamped: the time of writing
        details = [a.detail for a in s.scalars(select(AuditEvent).where(AuditEvent.event == "instance"))]
        assert details.count("new") == 4 and details.count("duplicate (idempotent)") == 2
    stamped = f.make_cr(16, 16)  # a new study's first instance: the study starts at its receipt time too
    record_instances(store, [(stamped, "s.dcm", 1, "PACS", received)])
    with store.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == str(stamped.StudyInstanceUID))).one()
        assert study.first_received == study.last_received == received


def test_spool_write_is_atomic_and_partials_are_cleaned(tmp_path):
    spool = Spool(tmp_path / "spool")
    written = spool.write("1.2.3", "1.2.3.4", b"DICM" * 10)
    assert written.path.read_bytes() == b"DICM" * 10 and not written.replaced
    assert spool.write("1.2.3", "1.2.3.4", b"x").replaced
    (written.path.parent / ".junk.partial").write_bytes(b"half")
    assert spool.remove_partials() == 1
    with pytest.raises(ValueError, match="not a valid UID"):
        spool.write("../../etc", "1.2", b"x")


def test_spool_path_names_by_sop_instance_uid(tmp_path):
    spool = Spool(tmp_path)
    assert spool.path_for("1.2", "1.2.3") == Path(tmp_path) / "1.2" / "1.2.3.dcm"


def test_dicom_tls_with_storescu_and_plain_connections_refused(scp, tmp_path):
    need_tool("storescu")
    from .tls_certs import make_certificates

    certs = make_certificates(tmp_path / "certs")
    server = scp(**{"scp.tls": {"enabled": True, "required": True, "certificate": str(certs["server.crt"]),
                                "private_key": str(certs["server.key"]), "ca_certificates": str(certs["ca.crt"])}})
    path = f.write_datasets([f.make_cr(32, 32)], tmp_path / "in")[0]
    secure = subprocess.run([need_tool("storescu"), "+tls", str(certs["client.key"]), str(certs["client.crt"]),
                             "+cf", str(certs["ca.crt"]), "-aec", "MEDVERSA", "127.0.0.1", str(server.port), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert secure.returncode == 0, secure.stderr
    plain = subprocess.run([need_tool("storescu"), "-aec", "MEDVERSA", "127.0.0.1", str(server.port), str(path)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    anonymous = subprocess.run([need_tool("storescu"), "+tla", "+cf", str(certs["ca.crt"]), "-aec", "MEDVERSA",
                                "127.0.0.1", str(server.port), str(path)], capture_output=True, text=True, timeout=60)
    assert anonymous.returncode != 0  # no client certificate: refused (mutual authentication)
    assert _count(server, Instance) == 1
    record_case("security", "DICOM TLS listener (dcmtk storescu +tls, mutual authentication)",
                "TLS with a client certificate stores; plain TCP and TLS without a certificate refused",
                instances_sent=3, acknowledged=1, lost=0)
