"""Malformed and hostile DICOM (tests/bad_inputs.py) sent to a real ``medversa serve`` with dcmtk's
storescu, and given to ``medversa infer``.

For every case the node must answer with the right status or refuse the presentation context,
log why, leave nothing of it in the spool, and keep serving: a good instance sent right after it
is acknowledged and its study processed. ``medversa infer`` must skip the input with one clear
line and no traceback. The whole corpus goes through one node (one start-up, one model load); the
parametrized tests then check each case's outcome.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from medversa.benchmarks.peers import free_port, wait_port
from medversa.dicom_mapping import truncation
from medversa.node.job_store import JobState, Store, Study, StudyState

from . import dicom_factory as f
from .bad_inputs import CASE_NAMES, BadInput, build_corpus, send_raw, study_uid_of
from .dicom_tools import need_tool
from .node_process import (
    MODEL_ENV,
    NODE_AE,
    kill_group,
    node_config,
    start_serve,
    statuses,
    storescu,
)
from .reliability import record_case

#: Fast routing: one short task per chest study, the organ segmentation for abdominal CT.
ROUTING = [
    {"name": "chest radiograph", "modality": "CR|DX", "body_part": "CHEST|",
     "tasks": ["chest_pathology_classification"]},
    {"name": "abdominal CT", "modality": "CT", "body_part": "ABDOMEN", "tasks": ["abdominal_organ_segmentation"]},
]
MANY = 1000


@dataclass
class CaseRun:
    """What one case did: storescu's run, the raw sender's status, the good instance sent after it."""

    case: BadInput
    sent: subprocess.CompletedProcess[str]
    raw_status: int | None = None
    good_status: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CorpusRun:
    runs: dict[str, CaseRun]
    log: str
    spool: Path
    #: Per study: (study state, instances not yet taken by a job, latest job's state, its notes).
    studies: dict[str, tuple[StudyState, int, JobState | None, list[str]]]
    good_study: str
    infer_bad: subprocess.CompletedProcess[str]
    infer_many: subprocess.CompletedProcess[str]
    infer_out: Path


def _studies(store: Store) -> dict[str, tuple[StudyState, int, JobState | None, list[str]]]:
    with store.session() as s:
        out = {}
        for study in s.scalars(select(Study)):
            job = max(study.jobs, key=lambda j: j.version, default=None)
            out[study.study_instance_uid] = (study.state, study.pending_instances, job.state if job else None,
                                             list(job.notes or []) if job else [])
        return out


def _processed(entry: tuple[StudyState, int, JobState | None, list[str]] | None) -> bool:
    """Every received instance went into a job version, and the latest one is done."""
    return entry is not None and entry[0] is StudyState.DONE and entry[1] == 0 and entry[2] is JobState.DONE


def _infer(*inputs: Path, out: Path) -> subprocess.Popen[str]:
    """``medversa infer`` in the background; its output goes to files beside ``out``."""
    return subprocess.Popen([sys.executable, "-m", "medversa.cli", "infer", *map(str, inputs), "--out", str(out),
                             "--preset", "tiny"], stdout=out.with_suffix(".out").open("w"),
                            stderr=out.with_suffix(".err").open("w"), text=True, env=dict(os.environ, **MODEL_ENV))


def _finish(proc: subprocess.Popen[str], out: Path) -> subprocess.CompletedProcess[str]:
    proc.wait(300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.with_suffix(".out").read_text(),
                                       out.with_suffix(".err").read_text())


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    """Send the whole corpus to one node, a good instance after each case (all in one good study),
    then wait until every acknowledged study is processed."""
    need_tool("storescu")
    tmp = tmp_path_factory.mktemp("bad-inputs")
    cases = build_corpus(tmp / "corpus", many=MANY)
    # medversa infer beside the node: the rejected and unusable inputs in one run, each file one
    # argument; the many tiny instances in another.
    infer_bad = _infer(*[p for c in cases if c.infer for p in c.files], out=tmp / "infer-bad")
    infer_many = _infer(next(c for c in cases if c.infer is None).files[0].parent, out=tmp / "infer-many")
    port = free_port()
    log = tmp / "serve.log"
    node = start_serve(node_config(tmp, port, routing=ROUTING, idle_seconds=2), log)
    store = Store(f"sqlite:///{tmp / 'node' / 'medversa.db'}")
    good_study, good_series = generate_uid(), generate_uid()
    runs: dict[str, CaseRun] = {}
    try:
        wait_port(port, 90)
        for number, case in enumerate(cases, 1):
            started = time.perf_counter()
            run = CaseRun(case, storescu(port, *case.files, options=case.options, timeout=300))
            if case.raw_status is not None:
                run.raw_status = send_raw(case.files[0], port, NODE_AE)
            good = f.make_cr(64, 64, study_uid=good_study, series_uid=good_series, instance_number=number)
            run.good_status = statuses(storescu(port, *f.write_datasets([good], tmp / "good")))
            run.seconds = time.perf_counter() - started
            runs[case.name] = run
        waited_for = {good_study} | {study_uid_of(c) for c in cases if c.processed}
        deadline = time.monotonic() + 240
        while not all(_processed(_studies(store).get(uid)) for uid in waited_for) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        kill_group(node, signal.SIGTERM)
    return CorpusRun(runs, log.read_text(errors="replace"), tmp / "node" / "spool", _studies(store), good_study,
                     _finish(infer_bad, tmp / "infer-bad"), _finish(infer_many, tmp / "infer-many"), tmp / "infer-bad")


def _hex(status: int | None) -> str:
    return "context refused" if status is None else f"0x{status:04X}"


@pytest.mark.parametrize("name", CASE_NAMES, ids=[re.sub(r"\W+", "-", n).strip("-").lower() for n in CASE_NAMES])
def test_bad_input_gets_its_status_a_logged_reason_and_leaves_nothing(corpus_run: CorpusRun, name: str) -> None:
    run = corpus_run.runs[name]
    case = run.case
    output = run.sent.stdout + run.sent.stderr
    got = statuses(run.sent)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True, force=True).file_meta.MediaStorageSOPInstanceUID)
            for p in case.files]
    if case.status is None:
        assert got == [] and case.storescu_says in output, output[-3000:]
    else:
        assert got == [case.status] * len(case.files), (got[:10], output[-3000:])
        if case.status:
            assert "ErrorComment" in output  # the reason travels back to the sender too
    if case.raw_status is not None:
        assert run.raw_status == case.raw_status
    refused = case.status not in (0, None) or case.raw_status is not None
    lines = corpus_run.log.splitlines()
    if refused:  # the C-STORE refusal names the instance, the status and the reason
        status = case.raw_status if case.raw_status is not None else case.status
        assert any(uids[0] in line and f"refused, {_hex(status)}" in line and case.log in line for line in lines), \
            corpus_run.log[-4000:]
    elif case.status is None:  # the context refusal names the SOP class or transfer syntax
        assert any("presentation context(s) refused" in line and case.log in line for line in lines)
    else:
        assert case.log in corpus_run.log
    spooled = {p.stem for p in corpus_run.spool.rglob("*.dcm")}
    if case.status == 0:
        assert set(uids) <= spooled
    else:
        assert not set(uids) & spooled, "a refused instance reached the spool"
    if case.processed:
        entry = corpus_run.studies.get(study_uid_of(case))
        assert _processed(entry), entry
        if case.infer:
            assert any(case.infer in note for note in entry[3]), entry
    assert run.good_status == [0], "the node stopped serving after this input"
    record_case("bad input", f"{name}: {case.what}",
                (f"all acknowledged and processed; logged: '{case.log}'" if case.status == 0 else
                 f"refused {_hex(case.status)}; reason logged" if case.status is not None else
                 f"not sent by storescu ({case.storescu_says}); raw bytes refused {_hex(case.raw_status)}; "
                 "reason logged" if case.raw_status is not None else
                 f"presentation context refused ({case.storescu_says}); reason logged")
                + "; next instance 0x0000",
                instances_sent=len(case.files), acknowledged=got.count(0), lost=0,
                status=_hex(case.raw_status if case.raw_status is not None else case.status),
                seconds=round(run.seconds, 2), **case.figures)


def test_the_spool_holds_only_complete_instances(corpus_run: CorpusRun) -> None:
    assert not list(corpus_run.spool.rglob("*.partial"))
    files = list(corpus_run.spool.rglob("*.dcm"))
    assert len(files) >= MANY
    for path in files:
        assert truncation(pydicom.dcmread(path)) is None, path


def test_the_node_keeps_serving_and_processes_the_good_instances(corpus_run: CorpusRun) -> None:
    """The good instance sent after each bad input was acknowledged, and their study processed."""
    sent = len(corpus_run.runs)
    assert [r.good_status for r in corpus_run.runs.values()] == [[0]] * sent
    good = sorted(corpus_run.spool.joinpath(corpus_run.good_study).glob("*.dcm"))
    assert len(good) == sent
    entry = corpus_run.studies.get(corpus_run.good_study)
    assert _processed(entry), (entry, corpus_run.log[-3000:])
    assert "Traceback" not in corpus_run.log
    record_case("bad input", "a good instance after each bad input", "acknowledged (0x0000); its study processed",
                instances_sent=sent, acknowledged=sent, processed=sent, lost=0)


def test_medversa_infer_skips_each_bad_input_with_one_line(corpus_run: CorpusRun) -> None:
    bad = corpus_run.infer_bad
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    # Nothing is analysed; a study of films the node was sent to read and could not (pixel data that
    # does not decode) gets the not-analysed SR and its text, as the node would send them, and nothing else.
    written = [line.split("\t") for line in bad.stdout.splitlines()]
    assert {kind for kind, _, _ in written} == {"SR", "SR-TEXT"}, bad.stdout
    assert sorted(p for _, p, _ in written) == sorted(str(p) for p in corpus_run.infer_out.glob("*.dcm"))
    for kind, path, _ in written:
        if kind == "SR":
            sr = pydicom.dcmread(path)
            comments = [i.TextValue for group in sr.ContentSequence for i in group.get("ContentSequence", [])
                        if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
            assert comments and all(c.startswith("Not analysed: ") and c.endswith("made no results for this study.")
                                    for c in comments), comments
    assert "no results: no study was analysed" in bad.stderr
    notes = [line for line in bad.stderr.splitlines() if line.startswith("note: ")]
    for run in corpus_run.runs.values():
        case = run.case
        if not case.infer:
            continue
        names = {str(p) for p in case.files}
        with contextlib.suppress(Exception):  # an unreadable file is named by its path
            names.add(study_uid_of(case))
        assert any(case.infer in line and any(n in line for n in names) for line in notes), (case.name, notes)
    many = corpus_run.infer_many
    assert many.returncode == 0 and "Traceback" not in many.stderr, many.stderr[-3000:]
    written = [line.split("\t")[1] for line in many.stdout.splitlines() if line.startswith("SR\t")]
    many_case = next(r.case for r in corpus_run.runs.values() if r.case.infer is None)
    assert [str(pydicom.dcmread(p).StudyInstanceUID) for p in written] == [study_uid_of(many_case)]
    record_case("bad input", "medversa infer on every bad input", "each skipped with one note, exit 1, no traceback",
                inputs=sum(1 for r in corpus_run.runs.values() if r.case.infer), notes=len(notes))
