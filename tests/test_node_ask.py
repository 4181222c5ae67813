"""A reader asks from the viewer, for real: Orthanc with deploy/orthanc/autoroute.lua, one ``medversa serve``
(embedded worker, tiny model with scripted answers: the text is planted, the plumbing is real), dcmjs-shaped
reader objects stored into Orthanc by dcmtk's storescu.

Checked: an OHIF 3.13 measurement report (a RectangleROI asking a question, an ArrowAnnotate labelled "?")
and a GSPS (a rectangle and a text) are forwarded at once, answered in an SR that Orthanc then holds, at the
reader's coordinates, citing the reader's object, with question and answer, dciodvfy and PixelMed clean; the
study's own analysis is not run again; the node's answer SR sent back to it is not answered again; an
annotation on an image neither the node nor the PACS has ends with a logged reason and the node carries on;
``medversa ask`` answers a question about a study on the node. One Orthanc and one node serve the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom import Dataset
from sqlalchemy import select

from medversa.benchmarks.peers import free_port, wait_port
from medversa.dicom_mapping import read_answers
from medversa.dicom_mapping.answer_sr import SERIES_DESCRIPTION
from medversa.node.job_store import Instance, Job, JobState, Store, Study

from . import dicom_factory as f
from .ask_fixtures import arrow_group, gsps_with_text, ohif_measurement_report, rectangle_group
from .dicom_tools import dciodvfy_errors, need_tool, pixelmed_sr_report
from .node_process import MODEL_ENV, NODE_AE, node_config, start_serve, statuses, stop_serve, storescu, wait_for
from .orthanc import OrthancServer, orthanc_server

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/Orthanc").exists(), reason="Orthanc is not installed")

REPO = Path(__file__).resolve().parents[1]
CAPTION = "A small rounded opacity."
ANSWER = "No, there is no pneumothorax."
SCRIPTED = {"report_impression": "No acute cardiopulmonary process.", "region_captioning": CAPTION, "vqa": ANSWER}
ROUTING = [{"name": "chest radiograph", "modality": "CR|DX", "tasks": ["report_impression"]}]


LOCAL_AE = "LOCALASK"


class Setup:
    """The module's Orthanc and node, and helpers to talk to them."""

    def __init__(self, pacs: OrthancServer, proc: subprocess.Popen, port: int, log: Path, store: Store,
                 config: Path, local_port: int) -> None:
        self.pacs, self.proc, self.port, self.log, self.store, self.config = pacs, proc, port, log, store, config
        self.local_port = local_port

    def to_pacs(self, datasets: list[Dataset], folder: Path) -> None:
        """storescu from the reader's workstation (AE READER) into Orthanc."""
        paths = f.write_datasets(datasets, folder)
        result = subprocess.run([need_tool("storescu"), "-d", "-R", "-aet", "READER", "-aec", self.pacs.aet,
                                 "127.0.0.1", str(self.pacs.dicom_port), *map(str, paths)], capture_output=True,
                                text=True, timeout=60, check=False, env=dict(os.environ, TCP_NODELAY="1"))
        assert statuses(result) == [0] * len(paths), result.stdout + result.stderr

    def jobs(self, study_uid: str) -> list[Job]:
        with self.store.session() as s:
            jobs = list(s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)
                                  .order_by(Job.id)))
            for job in jobs:
                s.expunge(job)
            return jobs

    def finished(self, study_uid: str, *, ask: bool, count: int = 1, timeout: float = 120) -> list[Job]:
        def done() -> list[Job] | None:
            jobs = [j for j in self.jobs(study_uid) if (j.ask is not None) is ask]
            ok = len(jobs) >= count and all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs)
            return jobs if ok else None

        wait_for(lambda: done() is not None, timeout, f"no finished {'ask' if ask else 'analysis'} job for {study_uid}",
                 self.log)
        return done() or []

    def objects(self, study_uid: str, description: str) -> list[Dataset]:
        """The study's instances in Orthanc whose Series Description contains ``description``."""
        found = []
        for row in self.pacs.study_instances(study_uid):
            ds = pydicom.dcmread(BytesIO(self.pacs.instance_file(row["ID"])))
            if description in str(ds.get("SeriesDescription", "")):
                found.append(ds)
        return found

    def answer_sr(self, study_uid: str, timeout: float = 90) -> Dataset:
        found: list[Dataset] = []
        wait_for(lambda: bool(found.extend(self.objects(study_uid, SERIES_DESCRIPTION)) or found), timeout,
                 f"no answer SR of study {study_uid} in Orthanc", self.log)
        return found[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    node_port, local_port = free_port(), free_port()
    pacs = orthanc_server(tmp_path_factory, modalities={"medversa": (NODE_AE, "127.0.0.1", node_port),
                                                        "local": (LOCAL_AE, "127.0.0.1", local_port)},
                          lua_scripts=[REPO / "deploy" / "orthanc" / "autoroute.lua"], stable_age=1,
                          extra_config={"UserMetadata": {"MedversaForwarded": 1024}})
    tmp = tmp_path_factory.mktemp("ask-node")
    script = tmp / "scripted.yaml"
    script.write_text(yaml.safe_dump(SCRIPTED))
    config = node_config(tmp, node_port, routing=ROUTING,
                         model={"preset": "tiny", "scripted_answers": str(script)},
                         export={"destinations": [str(pacs.peer)], "backoff_initial_s": 1},
                         pacs={"peer": str(pacs.peer), "retrieve": "move", "query_timeout_s": 10,
                               "retrieve_timeout_s": 20, "confirm_completeness": False})
    log = tmp / "serve.log"
    proc = start_serve(config, log)
    try:
        wait_port(node_port, 90)
    except RuntimeError:
        stop_serve(proc)
        pacs.stop(kill=True)
        raise AssertionError(f"serve did not listen; log:\n{log.read_text()[-3000:]}") from None
    yield Setup(pacs, proc, node_port, log, Store(f"sqlite:///{tmp / 'node' / 'medversa.db'}"), config, local_port)
    stop_serve(proc)
    pacs.stop(kill=True)


def _analysed_study(setup: Setup, folder: Path, patient: str) -> Dataset:
    """A chest radiograph stored into Orthanc, auto-routed to the node and analysed (its SR back in Orthanc)."""
    image = f.make_cr(64, 64, body_part="CHEST", PatientID=patient, SeriesDescription="CHEST PA")
    setup.to_pacs([image], folder / "image")
    [job] = setup.finished(str(image.StudyInstanceUID), ask=False)
    assert job.state is JobState.DONE, job.error
    return image


def _texts(ds: Dataset, code: str) -> list[str]:
    found = []
    for child in ds.get("ContentSequence", []):
        names = child.get("ConceptNameCodeSequence", [])
        if names and names[0].get("CodeValue") == code and "TextValue" in child:
            found.append(str(child.TextValue))
        found += _texts(child, code)
    return found


def _check_valid(sr: Dataset, folder: Path) -> None:
    path = folder / "answer.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    errors, _warnings = pixelmed_sr_report(path)
    assert errors == []


def _evidence(sr: Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def test_an_ohif_report_is_answered_where_the_reader_drew_and_the_study_is_not_analysed_again(setup, tmp_path):
    image = _analysed_study(setup, tmp_path, "ASK-OHIF")
    study_uid = str(image.StudyInstanceUID)
    [main_sr] = [ds for ds in setup.objects(study_uid, "MedVersa report (") if ds.Modality == "SR"]
    report = ohif_measurement_report(image, [
        rectangle_group(image, (8.0, 10.0, 30.5, 40.0), "Is there a pneumothorax?"),
        arrow_group(image, (44.0, 20.0), (54.0, 30.0), "?")])
    started = time.monotonic()
    setup.to_pacs([report], tmp_path / "report")
    sr = setup.answer_sr(study_uid)
    seconds = time.monotonic() - started

    groups = read_answers(sr)
    assert [g["graphic_type"] for g in groups] == ["POLYLINE", "POINT"]
    assert groups[0]["graphic_data"] == [8.0, 10.0, 30.5, 10.0, 30.5, 40.0, 8.0, 40.0, 8.0, 10.0]
    assert groups[1]["graphic_data"] == [44.0, 20.0]  # the arrow's tip
    for group in groups:
        assert group["image"] == str(image.SOPInstanceUID)
        assert group["annotation"] == str(report.SOPInstanceUID)
        assert group["caption"] == CAPTION
    assert groups[0]["question"] == "Is there a pneumothorax?" and groups[0]["answer"] == ANSWER
    assert groups[0]["comment"] == ANSWER  # the text a viewer shows at the rectangle
    assert "question" not in groups[1] and groups[1]["comment"] == CAPTION  # "?": the region's description
    assert _evidence(sr) == {str(image.SOPInstanceUID), str(report.SOPInstanceUID)}
    assert sr.VerificationFlag == "UNVERIFIED" and "AI-generated, unverified" in sr.SeriesDescription
    assert sr.Manufacturer == "medversa-node" and sr.ContributingEquipmentSequence[0].Manufacturer == "medversa-node"
    assert any("has not been verified" in text for text in _texts(sr, "ai-notice"))
    assert sr.SOPInstanceUID != main_sr.SOPInstanceUID and sr.SeriesInstanceUID != main_sr.SeriesInstanceUID
    _check_valid(sr, tmp_path)

    analyses = [j for j in setup.jobs(study_uid) if j.ask is None]
    assert len(analyses) == 1 and analyses[0].state is JobState.DONE  # no second analysis, the results stay
    [ask] = setup.finished(study_uid, ask=True)
    assert ask.state is JobState.DONE and ask.ask["annotation_uid"] == str(report.SOPInstanceUID), ask.error
    assert len([ds for ds in setup.objects(study_uid, "MedVersa report (") if ds.Modality == "SR"]) == 1
    print(f"\nannotation stored in Orthanc -> answer SR in Orthanc: {seconds:.1f} s")

    # The answer came back into Orthanc from the node: the routing script does not send it back...
    wait_for(lambda: "node's own result, not forwarded" in setup.pacs.log_text(), 20,
             "the routing script did not say it kept the answer SR", setup.log)
    # ...and when it reaches the node anyway, the node does not answer its own answer.
    result = storescu(setup.port, *f.write_datasets([sr], tmp_path / "back"), options=("-R",))
    assert statuses(result) == [0], result.stdout + result.stderr

    def looked_at() -> str:
        with setup.store.session() as s:
            row = s.scalars(select(Instance).where(Instance.sop_instance_uid == str(sr.SOPInstanceUID))).first()
            return row.annotation if row is not None and row.annotation != "new" else ""

    wait_for(lambda: bool(looked_at()), 20, "the node did not look at its own answer SR", setup.log)
    assert looked_at().startswith("ignored: node's own result"), looked_at()
    time.sleep(1.5)
    assert len([j for j in setup.jobs(study_uid) if j.ask is not None]) == 1
    assert len([j for j in setup.jobs(study_uid) if j.ask is None]) == 1


def test_a_gsps_on_an_image_whose_files_are_gone_is_answered_after_a_c_move(setup, tmp_path):
    """The node analysed the study and its files went (retention): the image comes back by C-MOVE, and
    coming back does not start the study's analysis again."""
    image = _analysed_study(setup, tmp_path, "ASK-GSPS")
    study_uid = str(image.StudyInstanceUID)
    with setup.store.session() as s:
        path = Path(s.scalars(select(Instance.path).where(
            Instance.sop_instance_uid == str(image.SOPInstanceUID))).one())
    path.unlink()
    gsps = gsps_with_text(image, (12.0, 14.0, 40.0, 44.0), "Is there an effusion?")
    setup.to_pacs([gsps], tmp_path / "gsps")
    sr = setup.answer_sr(study_uid)

    [group] = read_answers(sr)
    assert group["graphic_type"] == "POLYLINE"
    assert group["graphic_data"] == [12.0, 14.0, 40.0, 14.0, 40.0, 44.0, 12.0, 44.0, 12.0, 14.0]
    assert group["image"] == str(image.SOPInstanceUID) and group["annotation"] == str(gsps.SOPInstanceUID)
    assert (group["question"], group["answer"], group["caption"]) == ("Is there an effusion?", ANSWER, CAPTION)
    _check_valid(sr, tmp_path)
    [ask] = setup.finished(study_uid, ask=True)
    assert any("retrieved: C-MOVE" in note for note in ask.notes), ask.notes
    assert path.is_file()
    time.sleep(2)  # an analysis wrongly started by the retrieve would be queued by now (idle 1 s)
    assert len([j for j in setup.jobs(study_uid) if j.ask is None]) == 1


def test_an_annotation_on_an_image_nobody_has_ends_with_a_logged_reason(setup, tmp_path):
    """The reader's SR references an image the PACS no longer has (nor ever sent the node)."""
    gone = f.make_cr(64, 64, body_part="CHEST", PatientID="ASK-GONE")
    report = ohif_measurement_report(gone, [rectangle_group(gone, (5, 5, 20, 20), "What is this?")])
    setup.to_pacs([report], tmp_path / "report")
    [ask] = setup.finished(str(gone.StudyInstanceUID), ask=True)
    assert ask.state is JobState.DONE
    assert "neither on the node nor on the PACS" in ask.error, ask.error
    log = setup.log.read_text()
    assert f"not answered: image {gone.SOPInstanceUID}" in log, log[-3000:]
    assert setup.proc.poll() is None  # the node carries on
    assert setup.objects(str(gone.StudyInstanceUID), SERIES_DESCRIPTION) == []


def test_medversa_ask_answers_a_question_about_a_study_on_the_node(setup, tmp_path):
    image = _analysed_study(setup, tmp_path, "ASK-CLI")
    result = subprocess.run([sys.executable, "-m", "medversa.cli", "ask", str(image.StudyInstanceUID),
                             "Is there a pneumothorax?", "--region", "4,6,30,40", "--config", str(setup.config),
                             "--json"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **MODEL_ENV})
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["state"] == "DONE", out
    [group] = out["answers"]
    assert (group["question"], group["answer"], group["caption"]) == ("Is there a pneumothorax?", ANSWER, CAPTION)
    assert np.allclose(group["graphic_data"], [4, 6, 30, 6, 30, 40, 4, 40, 4, 6])
    sr = setup.answer_sr(str(image.StudyInstanceUID))
    assert read_answers(sr) == out["answers"]
    bad = subprocess.run([sys.executable, "-m", "medversa.cli", "ask", str(image.StudyInstanceUID), "",
                          "--config", str(setup.config)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **MODEL_ENV})
    assert bad.returncode == 2 and "give a question, a region" in bad.stderr, bad.stderr


def test_annotating_before_the_pacs_routed_the_study_answers_and_the_study_is_still_analysed_once(setup, tmp_path):
    """The reader saves a question right after the image reached the PACS: the annotation goes to the node at
    once, the image follows when the study is stable (1 s here). Whichever arrives first (the node may fetch
    the image by C-MOVE for the answer), the question is answered and the study analysed exactly once."""
    image = f.make_cr(64, 64, body_part="CHEST", PatientID="ASK-EARLY", SeriesDescription="CHEST PA")
    report = ohif_measurement_report(image, [rectangle_group(image, (8, 8, 40, 40), "Is there a pneumothorax?")])
    setup.to_pacs([image, report], tmp_path / "both")
    study_uid = str(image.StudyInstanceUID)
    [group] = read_answers(setup.answer_sr(study_uid))
    assert (group["image"], group["answer"]) == (str(image.SOPInstanceUID), ANSWER)
    [analysis] = setup.finished(study_uid, ask=False)
    assert analysis.state is JobState.DONE, analysis.error
    time.sleep(2)
    assert len([j for j in setup.jobs(study_uid) if j.ask is None]) == 1
    assert len([j for j in setup.jobs(study_uid) if j.ask is not None]) == 1


def test_what_the_node_moved_to_itself_starts_no_analysis_until_the_pacs_sends_it(setup, tmp_path):
    """C-STORE sub-operations of the node's own C-MOVE (Move Originator AE Title = its AE title) are
    recorded as retrieved: no pending instance, no reopened study. The PACS sending the same image for
    analysis later counts. (An in-process SCP known to Orthanc as LOCALASK plays the node here.)"""
    from medversa.node.node_context import NodeContext
    from medversa.node.scp import RETRIEVED, StorageSCP
    from medversa.node.scu import move_study
    from medversa.node.settings import load_settings

    image = f.make_cr(64, 64, body_part="CHEST", PatientID="ASK-MOVED")
    buffer = BytesIO()
    image.save_as(buffer, enforce_file_format=True)
    setup.pacs.upload(buffer.getvalue())
    ctx = NodeContext(load_settings(None, data_dir=tmp_path / "local", **{
        "scp.ae_title": LOCAL_AE, "scp.bind": "127.0.0.1", "scp.port": setup.local_port}))
    scp = StorageSCP(ctx.settings, ctx.store, ctx.spool)
    scp.start()
    try:
        with ctx.store.session() as s:
            s.add(Study(study_instance_uid=str(image.StudyInstanceUID)))
        outcome = move_study(setup.pacs.peer, LOCAL_AE, str(image.StudyInstanceUID), LOCAL_AE, timeout=20)
        assert outcome.ok and outcome.completed == 1, outcome.message
        scp.flush()
        with ctx.store.session() as s:
            study = s.scalars(select(Study)).one()
            assert (study.pending_instances, study.state.value) == (0, "RECEIVING")
            assert s.scalars(select(Instance)).one().calling_ae == RETRIEVED
        result = subprocess.run([need_tool("storescu"), "-aet", "PACS", "-aec", LOCAL_AE, "127.0.0.1",
                                 str(setup.local_port), *map(str, f.write_datasets([image], tmp_path / "again"))],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        scp.flush()
        with ctx.store.session() as s:
            assert s.scalars(select(Study)).one().pending_instances == 1
            assert s.scalars(select(Instance)).one().calling_ae == "PACS"
    finally:
        scp.stop()
