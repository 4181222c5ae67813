"""Priors for real: a real Orthanc holds earlier studies the node has never seen (uploaded straight to
it, never routed through the node), real ``medversa serve`` processes (embedded worker, scripted
answers) receive the new study with dcmtk's storescu, fetch the prior by C-MOVE or C-GET, and export
the SR back to Orthanc, where the test reads it: Pertinent Other Evidence cites the prior's
instances, the comparison text names the prior's date and description.

The module starts its three nodes at once (C-MOVE, C-GET, and one whose PACS never answers), so
their start-ups overlap; the C-MOVE node and its Orthanc serve three cases, each with its own patient.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import select

from medversa.benchmarks.peers import free_port, wait_port
from medversa.node.job_store import Instance, Job, JobState, Store, Study, StudyState
from medversa.node.node_context import NodeContext
from medversa.node.priors import body_regions, fetch_prior, modality_family, regions_compatible
from medversa.node.scp import StorageSCP
from medversa.node.scu import find_study_series
from medversa.node.settings import load_settings

from . import dicom_factory as f
from .node_process import node_config, start_serve, statuses, storescu, wait_for
from .orthanc import OrthancServer, orthanc_server
from .reliability import record_case

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/Orthanc").exists(), reason="Orthanc is not installed")

COMPARISON = "The effusion is new since the prior study."
SCRIPTED = {"chest_pathology_classification": "The main diagnosis is pleural effusion.",
            "longitudinal_comparison": COMPARISON}
ROUTING = [{"name": "chest radiograph", "modality": "CR|DX", "body_part": "CHEST|",
            "tasks": ["chest_pathology_classification", "longitudinal_comparison"]}]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
COMPARISON_CODE = "18834-2"  # LOINC "Radiology Comparison study"
CURRENT_DATE = "20240102"
LOCAL_AE = "LOCALNODE"


@dataclass
class Node:
    """A running ``medversa serve`` with its port, log and job store."""

    proc: object
    port: int
    log: Path
    store: Store

    def send(self, datasets: list[Dataset], folder: Path) -> None:
        result = storescu(self.port, *f.write_datasets(datasets, folder))
        assert statuses(result) == [0] * len(datasets), result.stdout + result.stderr

    def finished_job(self, study_uid: str, timeout: float = 120) -> Job:
        found: list[Job] = []

        def done() -> bool:
            with self.store.session() as s:
                job = s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)
                                .order_by(Job.version.desc())).first()
                if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                    s.expunge(job)
                    found.append(job)
                    return True
            return False

        wait_for(done, timeout, f"no finished job for study {study_uid}", self.log)
        return found[0]


def _start_node(tmp: Path, port: int, **extra: object) -> Node:
    """``medversa serve`` (not waited for: see :func:`_listening`)."""
    script = tmp / "scripted.yaml"
    script.write_text(yaml.safe_dump(SCRIPTED))
    config = node_config(tmp, port, routing=ROUTING, model={"preset": "tiny", "scripted_answers": str(script)},
                         **extra)
    log = tmp / "serve.log"
    return Node(start_serve(config, log), port, log, Store(f"sqlite:///{tmp / 'node' / 'medversa.db'}"))


def _listening(node: Node) -> Node:
    try:
        wait_port(node.port, 90)
    except RuntimeError:
        raise AssertionError(f"serve did not listen; log:\n{node.log.read_text()[-3000:]}") from None
    return node


def _stop_all(nodes: list[Node], grace: float = 2) -> None:
    """Stop the nodes together: SIGTERM to every process group, SIGKILL to those still running after
    ``grace`` seconds (a Celery worker's warm shutdown can take longer; nothing here needs it)."""
    running = [n.proc for n in nodes if n.proc.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: the worker too, if serve ended first
        except ProcessLookupError:
            pass
        proc.wait(10)


def _study(patient: str, date: str, description: str = "XR CHEST PA", n: int = 1, *, body_part: str | None = "CHEST",
           study_uid: str | None = None, series_number: int = 1) -> list[Dataset]:
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    return [f.make_cr(64, 64, study_uid=study_uid, series_uid=series_uid, series_number=series_number,
                      instance_number=i + 1, body_part=body_part, PatientID=patient, StudyDate=date,
                      StudyTime="101010", StudyDescription=description, AccessionNumber=f"A{date}")
            for i in range(n)]


def _upload(pacs: OrthancServer, datasets: list[Dataset]) -> None:
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        pacs.upload(buffer.getvalue())


def _sr_from(pacs: OrthancServer, study_uid: str, node: Node, timeout: float = 60) -> Dataset:
    def sr_id() -> str | None:
        return next((i["ID"] for i in pacs.study_instances(study_uid) if i.get("SOPClassUID") == SR_CLASS), None)

    wait_for(lambda: sr_id() is not None, timeout, f"no SR of study {study_uid} in Orthanc", node.log)
    return pydicom.dcmread(BytesIO(pacs.instance_file(str(sr_id()))))


def _uids(datasets: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def _evidence(sr: Dataset, keyword: str) -> dict[str, set[str]]:
    """Study Instance UID -> the SOP Instance UIDs an evidence sequence cites."""
    return {str(study.StudyInstanceUID): {str(ref.ReferencedSOPInstanceUID) for series in study.ReferencedSeriesSequence
                                         for ref in series.ReferencedSOPSequence}
            for study in sr.get(keyword, [])}


def _texts(item: Dataset, code: str) -> Iterator[str]:
    for child in item.get("ContentSequence", []):
        names = child.get("ConceptNameCodeSequence", [])
        if names and names[0].CodeValue == code and "TextValue" in child:
            yield str(child.TextValue)
        yield from _texts(child, code)


def _check_sr_cites_the_prior(sr: Dataset, current: list[Dataset], used: list[Dataset], date: str,
                              description: str) -> str:
    """The SR of the current study cites ``used`` (the prior's images) in Pertinent Other Evidence, its
    own images in Current Requested Procedure Evidence, and says which prior it compared with."""
    prior_uid = str(used[0].StudyInstanceUID)
    assert sr.StudyInstanceUID == current[0].StudyInstanceUID
    assert _evidence(sr, "PertinentOtherEvidenceSequence") == {prior_uid: _uids(used)}
    assert prior_uid not in _evidence(sr, "CurrentRequestedProcedureEvidenceSequence")
    own = _evidence(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert _uids(current) <= own[str(current[0].StudyInstanceUID)]
    [text] = list(_texts(sr, COMPARISON_CODE))
    assert text.startswith(COMPARISON), text
    assert f"{date[:4]}-{date[4:6]}-{date[6:]}" in text and description in text and prior_uid in text, text
    return text


# -- shared parts -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def move_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def local_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, move_port: int, local_port: int) -> Iterator[OrthancServer]:
    """The PACS: knows the C-MOVE node as AE MEDVERSA (and the in-process SCP of the first tests as
    LOCALNODE); every node exports its results here."""
    server = orthanc_server(tmp_path_factory, modalities={"medversa": ("MEDVERSA", "127.0.0.1", move_port),
                                                          "local": (LOCAL_AE, "127.0.0.1", local_port)})
    yield server
    server.stop(kill=True)


@pytest.fixture
def local(pacs: OrthancServer, local_port: int, tmp_path: Path) -> Iterator[tuple[NodeContext, StorageSCP]]:
    """The worker's side in this process, with the node's own Storage SCP whose recorder writes rows
    only after a 1 s batch window (so a fetch that did not wait for them would find none)."""
    ctx = NodeContext(load_settings(None, data_dir=tmp_path / "node", **{
        "scp.ae_title": LOCAL_AE, "scp.bind": "127.0.0.1", "scp.port": local_port, "pacs.peer": str(pacs.peer),
        "pacs.query_timeout_s": 10, "pacs.retrieve_timeout_s": 10}))
    scp = StorageSCP(ctx.settings, ctx.store, ctx.spool)
    scp.recorder.window = 1.0
    scp.start()
    yield ctx, scp
    scp.stop()


@pytest.fixture(scope="module")
def silent_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A second PACS, for the node whose PACS never answers; resumed (if stopped) and stopped at the end."""
    server = orthanc_server(tmp_path_factory, aet="SILENT")
    yield server
    if server._process is not None:
        os.kill(server._process.pid, signal.SIGCONT)
    server.stop(kill=True)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, pacs: OrthancServer, silent_pacs: OrthancServer,
          move_port: int) -> Iterator[dict[str, Node]]:
    """Three nodes started together. ``move``: retrieves by C-MOVE, and retention removes finished
    studies' files at once (days: 0); ``get``: by C-GET; ``silent``: its PACS is ``silent_pacs``, with
    2 s timeouts and one retry after 1 s."""
    export = {"destinations": [str(pacs.peer)], "backoff_initial_s": 1}
    started = {
        "move": _start_node(tmp_path_factory.mktemp("move-node"), move_port, retention={"days": 0}, export=export,
                            pacs={"peer": str(pacs.peer), "retrieve": "move", "query_timeout_s": 10,
                                  "retrieve_timeout_s": 30}),
        "get": _start_node(tmp_path_factory.mktemp("get-node"), free_port(), export=export,
                           pacs={"peer": str(pacs.peer), "retrieve": "get", "query_timeout_s": 10,
                                 "retrieve_timeout_s": 30}),
        "silent": _start_node(tmp_path_factory.mktemp("silent-node"), free_port(), export=export,
                              pacs={"peer": str(silent_pacs.peer), "query_timeout_s": 2, "retrieve_timeout_s": 2},
                              jobs={"max_attempts": 2, "retry_initial_s": 1}),
    }
    try:
        yield {name: _listening(node) for name, node in started.items()}
    finally:
        _stop_all(list(started.values()))


@pytest.fixture
def move_node(nodes: dict[str, Node]) -> Node:
    return nodes["move"]


# -- the choice and the wait, in this process --------------------------------------------------


@pytest.mark.parametrize(("current", "prior", "compatible"), [
    (("CHEST", ""), ("THORAX", ""), True),
    (("CHEST", ""), ("", "XR CHEST PA"), True),           # no body part, a chest description
    (("", "CXR portable"), ("LUNG", ""), True),
    (("CHEST", ""), ("", ""), True),                      # nothing said: not a contradiction
    (("CHEST", ""), ("KNEE", "XR CHEST?"), False),         # Body Part Examined wins over the words
    (("CHEST", ""), ("ABDOMEN", ""), False),
    (("CHESTABDOMEN", ""), ("ABDOMEN", ""), True),
    (("KNEE", ""), ("KNEE", ""), True),
    (("KNEE", ""), ("HAND", ""), False),
])
def test_body_parts_are_compatible_when_they_share_a_region_or_one_says_nothing(current, prior, compatible):
    assert regions_compatible(body_regions(*current), body_regions(*prior)) is compatible


def test_cr_and_dx_are_one_modality_for_a_comparison():
    assert modality_family("DX") == modality_family("cr") == {"CR", "DX"}
    assert modality_family("CT") == {"CT"} and modality_family("") == frozenset()


def test_series_level_c_find_gives_what_the_choice_needs(pacs):
    chest = _study("LOCAL-SERIES", "20230101", "XR", n=2)
    knee = _study("LOCAL-SERIES", "20230101", "XR", study_uid=str(chest[0].StudyInstanceUID), series_number=2,
                  body_part="KNEE")
    knee[0].SeriesDescription = "knee lat"
    _upload(pacs, knee + chest)
    unknown = generate_uid()
    found = find_study_series(pacs.peer, LOCAL_AE, [str(chest[0].StudyInstanceUID), unknown])
    assert [(m.series_instance_uid, m.series_number, m.modality, m.body_part_examined, m.series_description,
             m.number_of_instances) for m in found[str(chest[0].StudyInstanceUID)]] == [
        (str(chest[0].SeriesInstanceUID), 1, "CR", "CHEST", "", 2),
        (str(knee[0].SeriesInstanceUID), 2, "CR", "KNEE", "knee lat", 1)]
    assert found[unknown] == []


def test_a_c_move_prior_is_used_only_once_its_rows_are_recorded(pacs, local):
    """The SCP answers Success before its recorder writes the rows (here after 1 s): the fetch waits
    for them, bounded, instead of finding the prior empty."""
    ctx, _scp = local
    prior = _study("LOCAL-WAIT", "20230101", "XR CHEST PA", n=2)
    _upload(pacs, prior)
    started = time.monotonic()
    fetched = fetch_prior(ctx, _study("LOCAL-WAIT", CURRENT_DATE))
    seconds = time.monotonic() - started
    assert fetched.datasets is not None, fetched.note
    assert _uids(fetched.datasets) == _uids(prior) and not fetched.retryable
    assert (fetched.study_uid, fetched.study_date, fetched.study_description) == (
        str(prior[0].StudyInstanceUID), "20230101", "XR CHEST PA")
    assert 0.9 < seconds < 8, seconds  # waited for the 1 s batch window, not for the 10 s timeout
    with ctx.store.session() as s:
        rows = s.scalars(select(Instance).join(Study).where(Study.study_instance_uid == fetched.study_uid)).all()
        assert {r.sop_instance_uid for r in rows} == _uids(prior) and rows[0].study.is_prior


def test_prior_problems_never_raise_and_say_whether_a_retry_may_help(pacs, local, tmp_path):
    ctx, _scp = local
    prior = _study("LOCAL-DAMAGED", "20230101", "XR CHEST PA", n=2)
    _upload(pacs, prior)
    current = _study("LOCAL-DAMAGED", CURRENT_DATE)
    assert fetch_prior(ctx, current).datasets is not None
    damaged = ctx.spool.path_for(str(prior[0].StudyInstanceUID), str(prior[0].SOPInstanceUID))
    damaged.write_bytes(b"not DICOM")  # damaged on disk since: the rest is used
    fetched = fetch_prior(ctx, current)
    assert fetched.datasets is not None and _uids(fetched.datasets) == _uids(prior[1:])
    assert "1 unreadable file(s) left out" in fetched.note

    undated = _study("LOCAL-DAMAGED", "")
    assert "no Study Date" in fetch_prior(ctx, undated).note and fetch_prior(ctx, undated).datasets is None

    closed = NodeContext(load_settings(None, data_dir=tmp_path / "closed", **{
        "pacs.peer": f"NOBODY@127.0.0.1:{free_port()}", "pacs.query_timeout_s": 2}))
    refused = fetch_prior(closed, current)
    assert refused.datasets is None and refused.retryable and "connection refused" in refused.note, refused.note

    unknown = NodeContext(load_settings(None, data_dir=tmp_path / "unknown", **{
        "scp.ae_title": "NOT-KNOWN", "pacs.peer": str(pacs.peer), "pacs.query_timeout_s": 10}))
    moved = fetch_prior(unknown, current)  # the PACS answers, but does not know our AE as a destination
    assert moved.datasets is None and not moved.retryable, moved
    assert "not available" in moved.note and "C-MOVE failed" in moved.note and "nothing arrived" in moved.note


def test_a_permanent_rejection_is_not_worth_a_retry(tmp_path):
    """A PACS that does not know the node's calling AE title rejects it permanently (A-ASSOCIATE-RJ
    result 1, reason 3): retrying the job would not help, unlike a PACS that does not answer."""
    port = free_port()
    strict = AE("STRICT")
    strict.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    strict.require_calling_aet = ["SOMEONE-ELSE"]
    server = strict.start_server(("127.0.0.1", port), block=False)
    try:
        ctx = NodeContext(load_settings(None, data_dir=tmp_path / "node", **{
            "pacs.peer": f"STRICT@127.0.0.1:{port}", "pacs.query_timeout_s": 5}))
        fetched = fetch_prior(ctx, _study("LOCAL-REJECTED", CURRENT_DATE))
    finally:
        server.shutdown()
    assert fetched.datasets is None and not fetched.retryable, fetched
    assert "prior query failed (association rejected by STRICT" in fetched.note and "Permanent" in fetched.note


# -- the cases --------------------------------------------------------------------------------


def test_c_move_brings_the_most_recent_compatible_prior_the_node_never_saw(pacs, move_node, tmp_path):
    """The PACS holds five other studies of the patient; the chosen prior is the most recent earlier
    chest radiograph: newer ones are a knee radiograph (same modality, other body part), a CT (other
    modality) and one after the current study. The chosen one has no Body Part Examined but a chest
    description (compatible); its two instances arrive by C-MOVE and are recorded before use."""
    patient = "PRIOR-MOVE"
    older = _study(patient, "20220101", "XR THORAX", body_part="THORAX")
    prior = _study(patient, "20230101", "XR CHEST PA 2023", n=2, body_part=None)
    knee = _study(patient, "20230601", "XR KNEE", body_part="KNEE")
    ct = f.make_ct_series(2, PatientID=patient, StudyDate="20230901", StudyTime="090000")
    later = _study(patient, "20250101", "XR CHEST PA 2025")
    _upload(pacs, older + prior + knee + ct + later)
    current = _study(patient, CURRENT_DATE, "XR CHEST PA 2024", n=2)
    started = time.monotonic()
    move_node.send(current, tmp_path / "current")

    job = move_node.finished_job(str(current[0].StudyInstanceUID))
    seconds = time.monotonic() - started
    assert job.state is JobState.DONE, job.error
    note = next(n for n in job.notes if "used for the comparison" in n)
    assert f"prior study {prior[0].StudyInstanceUID} (2023-01-01, XR CHEST PA 2023)" in note, job.notes
    assert "2 instance(s)" in note and "C-MOVE to MEDVERSA: 2 completed, 0 failed, 0 warning" in note, note
    sr = _sr_from(pacs, str(current[0].StudyInstanceUID), move_node)
    _check_sr_cites_the_prior(sr, current, prior, "20230101", "XR CHEST PA 2023")
    with move_node.store.session() as s:
        row = s.scalars(select(Study).where(Study.study_instance_uid == str(prior[0].StudyInstanceUID))).one()
        assert row.is_prior and not row.jobs  # recorded as a prior, never processed on its own
        assert {i.sop_instance_uid for i in row.instances} == _uids(prior)
        for other in (older, knee, later, ct):  # nothing else was retrieved
            assert s.scalars(select(Study).where(Study.study_instance_uid == str(other[0].StudyInstanceUID))
                             ).first() is None
    record_case("fault", "prior by C-MOVE, never seen by the node", "the most recent compatible prior retrieved "
                "(knee, CT and later studies passed over), recorded before use, cited in the SR",
                prior_instances=len(prior), job_seconds=round(seconds, 1))


def test_a_prior_whose_files_retention_removed_is_fetched_again(pacs, move_node, tmp_path):
    """The prior went through the node (auto-routed), was processed, delivered and purged by retention
    (files gone, rows kept). The follow-up study retrieves it again, only its image series: the PACS's
    copy of that study now also holds the node's own SR/SEG, which the SCP would refuse."""
    patient = "PRIOR-PURGED"
    prior = _study(patient, "20230301", "XR CHEST PA")
    _upload(pacs, prior)
    move_node.send(prior, tmp_path / "prior")
    prior_uid = str(prior[0].StudyInstanceUID)
    assert move_node.finished_job(prior_uid).state is JobState.DONE
    _sr_from(pacs, prior_uid, move_node)  # its results are on the PACS, in the prior's study

    def purged() -> bool:
        with move_node.store.session() as s:
            study = s.scalars(select(Study).where(Study.study_instance_uid == prior_uid)).one()
            paths = [Path(i.path) for i in study.instances]
            return study.state is StudyState.PURGED and bool(paths) and not any(p.exists() for p in paths)

    wait_for(purged, 30, "retention did not remove the prior's files", move_node.log)
    current = _study(patient, CURRENT_DATE, "XR CHEST PA")
    move_node.send(current, tmp_path / "current")

    job = move_node.finished_job(str(current[0].StudyInstanceUID))
    assert job.state is JobState.DONE, job.error
    note = next(n for n in job.notes if "used for the comparison" in n)
    assert "spooled files gone" in note and "1 completed, 0 failed" in note, note
    sr = _sr_from(pacs, str(current[0].StudyInstanceUID), move_node)
    _check_sr_cites_the_prior(sr, current, prior, "20230301", "XR CHEST PA")
    record_case("fault", "prior whose spooled files retention removed", "retrieved again by C-MOVE (image series "
                "only), used and cited; the job did not fail", prior_instances=len(prior))


def test_failed_sub_operations_use_what_arrived_and_say_so(pacs, move_node, tmp_path):
    """The prior's second series holds a CR without Pixel Data, which the node's SCP refuses (0xA900):
    Orthanc's C-MOVE of that series fails. The first series arrived and is used; the note says so."""
    patient = "PRIOR-PARTIAL"
    good = _study(patient, "20230401", "XR CHEST")
    bad = _study(patient, "20230401", "XR CHEST", study_uid=str(good[0].StudyInstanceUID), series_number=2)
    del bad[0].PixelData
    _upload(pacs, good + bad)
    current = _study(patient, CURRENT_DATE, "XR CHEST")
    move_node.send(current, tmp_path / "current")

    job = move_node.finished_job(str(current[0].StudyInstanceUID))
    assert job.state is JobState.DONE, job.error
    note = next(n for n in job.notes if "used for the comparison" in n)
    assert "C-MOVE failed" in note and "Failure" in note and "using the 1 instance(s) that arrived" in note, note
    sr = _sr_from(pacs, str(current[0].StudyInstanceUID), move_node)
    _check_sr_cites_the_prior(sr, current, good, "20230401", "XR CHEST")
    assert f"{bad[0].SOPInstanceUID} refused, 0xA900" in move_node.log.read_text()
    with move_node.store.session() as s:
        refused = s.scalars(select(Instance).where(Instance.sop_instance_uid == str(bad[0].SOPInstanceUID)))
        assert refused.first() is None
    record_case("fault", "prior retrieve with a failed sub-operation (an instance the SCP refuses)",
                "the series that arrived was used and cited; the note names the failure", prior_instances=2,
                arrived=1)


def test_c_get_retrieves_the_prior_over_the_nodes_own_association(pacs, nodes, tmp_path):
    """``pacs.retrieve: get``: the PACS does not know the node as a destination; the prior comes back on
    the node's association and is recorded before use."""
    patient = "PRIOR-GET"
    prior = _study(patient, "20230501", "XR CHEST PA", n=2)
    _upload(pacs, prior)
    node = nodes["get"]
    current = _study(patient, CURRENT_DATE, "XR CHEST PA")
    node.send(current, tmp_path / "current")
    job = node.finished_job(str(current[0].StudyInstanceUID))
    assert job.state is JobState.DONE, job.error
    note = next(n for n in job.notes if "used for the comparison" in n)
    assert "C-GET: 2 completed, 0 failed, 0 warning" in note, note
    sr = _sr_from(pacs, str(current[0].StudyInstanceUID), node)
    _check_sr_cites_the_prior(sr, current, prior, "20230501", "XR CHEST PA")
    record_case("fault", "prior by C-GET", "retrieved on the node's own association, recorded, used and cited",
                prior_instances=len(prior))


def test_a_pacs_that_never_answers_costs_only_the_comparison(pacs, silent_pacs, nodes, tmp_path):
    """The priors' PACS holds a prior but is stopped (SIGSTOP: TCP connects, DICOM never answers). The
    job ends DONE with the other task's results on the export PACS and the comparison skipped with the
    reason (logged as a warning), each try bounded by the configured 2 s."""
    patient = "PRIOR-SILENT"
    _upload(silent_pacs, _study(patient, "20230101", "XR CHEST PA"))
    assert silent_pacs._process is not None
    os.kill(silent_pacs._process.pid, signal.SIGSTOP)
    node = nodes["silent"]
    current = _study(patient, CURRENT_DATE, "XR CHEST PA")
    node.send(current, tmp_path / "current")
    job = node.finished_job(str(current[0].StudyInstanceUID))
    assert job.state is JobState.DONE, job.error
    reason = ("longitudinal comparison skipped: prior query failed (no answer from "
              f"SILENT@127.0.0.1:{silent_pacs.dicom_port} to the association request within 2.0 s")
    assert any(n.startswith(reason) for n in job.notes), job.notes
    assert any(reason in line and "WARNING" in line for line in node.log.read_text().splitlines())
    sr = _sr_from(pacs, str(current[0].StudyInstanceUID), node)
    assert not list(_texts(sr, COMPARISON_CODE)) and "PertinentOtherEvidenceSequence" not in sr
    own = _evidence(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert own == {str(current[0].StudyInstanceUID): _uids(current)}
    record_case("fault", "prior fetch: the PACS process is stopped (TCP connects, DICOM never answers)",
                "each try gave up after the configured 2 s; comparison skipped with the reason; the other "
                "task's results exported", attempts=job.attempts)
