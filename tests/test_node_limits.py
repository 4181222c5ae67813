"""The Storage SCP's limits with real peers (dcmtk storescu; the SCP in-process as in test_node_scp.py):
the size of one instance and of one study, memory per association, and what an over-size data set
leaves on disk (nothing: the spool's own ``.incoming`` folder is empty afterwards)."""

from __future__ import annotations

import logging
import tempfile
import threading
import tracemalloc

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from medversa.benchmarks.peers import free_port
from medversa.node.job_store import AuditEvent, Instance, Store
from medversa.node.scp import StorageSCP
from medversa.node.settings import load_settings
from medversa.node.spool import INCOMING, Spool

from . import dicom_factory as f
from .dicom_tools import need_tool
from .node_process import mount_tmpfs, statuses, storescu, unmount
from .reliability import record_case

MiB = 1024 * 1024


@pytest.fixture()
def scp(tmp_path):
    started: list[StorageSCP] = []

    def start(**flags: object) -> StorageSCP:
        settings = load_settings(None, data_dir=tmp_path / "data", **{"scp.port": free_port(), "scp.bind": "127.0.0.1",
                                                                       **flags})
        server = StorageSCP(settings, Store(settings.db_url), Spool(settings.spool_dir))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _recorded(server: StorageSCP) -> set[str]:
    server.flush()
    with server.store.session() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


def _big_cr(megabytes: int, **attrs: object) -> pydicom.Dataset:
    """A CR whose Pixel Data is ``megabytes`` MiB (16-bit zeros: cheap to build, exact in size)."""
    cols = 1024
    rows = megabytes * MiB // (cols * 2)
    return f.make_cr(pixels=np.zeros((rows, cols), dtype=np.uint16), bits=16, **attrs)


def test_an_instance_over_the_size_limit_gets_out_of_resources_and_the_next_one_is_stored(scp, tmp_path, caplog):
    """storescu sends small, over-size, small on one association: 0x0000, 0xA700 with an Error Comment
    naming the limit, 0x0000. The over-size data set never reaches the spool and leaves no file."""
    need_tool("storescu")
    server = scp(**{"scp.max_instance_bytes": 2 * MiB})
    study = pydicom.uid.generate_uid()
    small = [f.make_cr(128, 128, study_uid=study, instance_number=i) for i in (1, 3)]
    big = _big_cr(6, study_uid=study, instance_number=2)
    paths = f.write_datasets([small[0], big, small[1]], tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="medversa.node.scp"):
        sent = storescu(server.port, *paths, options=("--no-halt",))
    assert statuses(sent) == [0, 0xA700, 0], sent.stdout[-3000:]
    output = sent.stdout + sent.stderr
    assert f"instance over the size limit of {2 * MiB} bytes" in output  # Error Comment (0000,0902)
    assert any(str(big.SOPInstanceUID) in r.getMessage() and "0xA700" in r.getMessage()
               and "scp.max_instance_bytes" in r.getMessage() for r in caplog.records)
    assert _recorded(server) == {str(d.SOPInstanceUID) for d in small}
    assert {p.stem for p in server.spool.root.rglob("*.dcm")} == {str(d.SOPInstanceUID) for d in small}
    assert not any(server.spool.incoming.iterdir()), "a received data set was left in .incoming"
    with server.store.session() as s:
        detail = s.scalars(select(AuditEvent.detail).where(AuditEvent.outcome == "failure")).one()
    assert detail.startswith("0xA700 Out of Resources: instance of") and "max_instance_bytes" in detail
    record_case("bad input", "instance over scp.max_instance_bytes (6 MiB against 2 MiB, dcmtk storescu)",
                "refused 0xA700 with an Error Comment naming the limit; nothing spooled; the next instance 0x0000",
                instances_sent=3, acknowledged=2, refused=1, lost=0, status="0xA700")


def test_an_over_size_instance_never_takes_more_than_the_limit_on_disk_or_in_memory(scp, tmp_path):
    """A 48 MiB data set against a 1 MiB limit, received into a spool on an 8 MiB disk: were more than
    the limit written, the disk would fill and the answer would say so; the answer names the size
    limit instead. Python's allocations while it streams in stay far below its size (chunked receive:
    no in-memory copy of the data set)."""
    need_tool("storescu")
    data = tmp_path / "data"
    mount_tmpfs(data, "8m")
    try:
        server = scp(**{"scp.max_instance_bytes": MiB, "retention.refuse_above": 1.0})
        big = f.write_datasets([_big_cr(48)], tmp_path / "in")
        assert big[0].stat().st_size > 48 * MiB
        tracemalloc.start()
        try:
            sent = storescu(server.port, *big)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert statuses(sent) == [0xA700], sent.stdout[-2000:]
        assert f"instance over the size limit of {MiB} bytes" in sent.stdout + sent.stderr
        assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB allocated while receiving a 48 MiB data set"
        assert not any((data / "spool" / INCOMING).iterdir()) and not list((data / "spool").rglob("*.dcm"))
        later = f.write_datasets([f.make_cr(64, 64)], tmp_path / "later")
        assert statuses(storescu(server.port, *later)) == [0]  # the disk was never filled
        server.stop()
    finally:
        unmount(data)
    record_case("bad input", "48 MiB instance against scp.max_instance_bytes 1 MiB, spool on an 8 MiB disk",
                "0xA700 (size limit, not disk full): at most the limit written; "
                f"peak Python allocation while receiving {peak / MiB:.1f} MiB", instances_sent=2, acknowledged=1,
                refused=1, lost=0, status="0xA700", peak_allocated_mib=round(peak / MiB, 1))


def test_a_study_over_its_total_gets_out_of_resources_and_keeps_what_it_holds(scp, tmp_path):
    """Five instances of one study against room for three: 0x0000 x3, then 0xA700 with an Error Comment;
    the three stay recorded; a re-sent stored instance is still accepted (only growth counts); another
    study is stored as before."""
    need_tool("storescu")
    study = pydicom.uid.generate_uid()
    instances = [f.make_cr(256, 256, study_uid=study, instance_number=i) for i in range(1, 6)]
    paths = f.write_datasets(instances, tmp_path / "in")
    size = max(p.stat().st_size for p in paths)
    server = scp(**{"scp.max_instance_bytes": 2 * size, "scp.max_study_bytes": 3 * size + size // 2})
    sent = storescu(server.port, *paths, options=("--no-halt",))
    assert statuses(sent) == [0, 0, 0, 0xA700, 0xA700], sent.stdout[-3000:]
    assert f"study over its size limit of {3 * size + size // 2} bytes" in sent.stdout + sent.stderr
    stored = {str(d.SOPInstanceUID) for d in instances[:3]}
    assert _recorded(server) == stored
    assert statuses(storescu(server.port, paths[0])) == [0]  # a re-send replaces itself: no growth
    other = f.write_datasets([f.make_cr(256, 256)], tmp_path / "other")
    assert statuses(storescu(server.port, *other)) == [0]
    assert _recorded(server) == stored | {other[0].stem}
    assert server.spool.study_bytes(study) == sum(p.stat().st_size for p in (server.spool.root / study).glob("*.dcm"))
    record_case("bad input", "study over scp.max_study_bytes (5 instances, room for 3; dcmtk storescu)",
                "first 3 stored; the rest 0xA700 with an Error Comment; a re-send and another study still stored",
                instances_sent=7, acknowledged=5, refused=2, lost=0, status="0xA700")


def test_data_sets_are_received_into_the_spool_not_the_system_temporary_folder(scp, tmp_path, monkeypatch):
    """pynetdicom's chunked receive lands in the spool's own ``.incoming`` folder (the same disk, a
    rename into place), never in the system temporary folder, and each is fsynced before Success."""
    need_tool("storescu")
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    server = scp()
    opened: list[str] = []
    real_open = server.spool.open_incoming

    def spy(limit: int):
        incoming = real_open(limit)
        opened.append(incoming.name)
        return incoming

    monkeypatch.setattr(server.spool, "open_incoming", spy)
    fsynced: list[int] = []
    real_fsync = __import__("os").fsync
    monkeypatch.setattr("os.fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    paths = f.write_datasets([f.make_cr(96, 96) for _ in range(3)], tmp_path / "in")
    assert statuses(storescu(server.port, *paths)) == [0, 0, 0]
    assert len(opened) == 3 and all(name.startswith(str(server.spool.incoming)) for name in opened)
    assert not any(system_tmp.iterdir()), list(system_tmp.iterdir())
    assert len(fsynced) >= 6  # per instance: the file, then its folder
    for sent in paths:
        spooled = next(server.spool.root.rglob(sent.name))
        assert pydicom.dcmread(spooled).PixelData == pydicom.dcmread(sent).PixelData
    assert not any(server.spool.incoming.iterdir())


def test_a_peer_killed_mid_data_set_leaves_nothing_in_incoming(scp, tmp_path):
    """storescu SIGKILLed half-way through a 64 MiB data set: the partly received file is dropped when
    the connection closes (nothing half-received is kept or recorded), and the SCP keeps serving."""
    import signal
    import subprocess

    server = scp()
    big = f.write_datasets([_big_cr(64)], tmp_path / "in")
    peer = subprocess.Popen([need_tool("storescu"), "-aet", "PACS", "-aec", "MEDVERSA", "127.0.0.1",
                             str(server.port), str(big[0])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1000):  # until part of the data set is in .incoming
            files = list(server.spool.incoming.iterdir())
            if files and files[0].stat().st_size > 2 * MiB:
                break
            threading.Event().wait(0.005)
        else:
            pytest.fail("the data set never started to arrive")
    finally:
        peer.send_signal(signal.SIGKILL)
        peer.wait(30)
    for _ in range(1000):
        if not any(server.spool.incoming.iterdir()):
            break
        threading.Event().wait(0.01)
    assert not any(server.spool.incoming.iterdir()), "a partly received data set was left behind"
    later = f.write_datasets([f.make_cr(64, 64)], tmp_path / "later")
    assert statuses(storescu(server.port, *later)) == [0]
    assert _recorded(server) == {later[0].stem}
    record_case("fault", "sender (dcmtk storescu) SIGKILLed half-way through a 64 MiB data set",
                "the partly received file dropped at connection close; nothing recorded; the next instance 0x0000",
                instances_sent=2, acknowledged=1, lost=0)


def test_the_size_limits_are_checked_against_each_other():
    with pytest.raises(ValueError, match="max_instance_bytes .* is over max_study_bytes"):
        load_settings(None, **{"scp.max_instance_bytes": 10, "scp.max_study_bytes": 5})
    with pytest.raises(ValueError, match="scp.max_instance_bytes"):
        load_settings(None, **{"scp.max_instance_bytes": 0})
