"""Training under torchrun with two CPU processes (gloo), DDP and FSDP: a resumed run continues exactly as an
uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from medversa.inference import Declaration, Modality

from .training_fixtures import write_medinterp_mini

STEPS = 4


def _config(tmp: Path, data: Path, out: str, strategy: str) -> Path:
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "resume-test", "preset": "tiny", "seed": 7, "steps": STEPS, "save_every": 2, "strategy": strategy,
        "batch_size": {"cxr": 2, "derm": 2, "ct": 1}, "max_length": 96, "train_llm_base": True,
        "modality_weights": {"cxr": 1.0, "derm": 1.0, "ct": 0.5},
        "optimizer": {"warmup_steps": 2}, "checkpoint_dtype": None, "threads": 1,
        "context_fields": {"cxr": ["age", "sex", "view"], "derm": [], "ct": []},
        "datasets": [{"name": "medinterp-mini", "root": str(data), "split": "train"}],
        "output_dir": str(tmp / out)}))
    return path


def _torchrun(config: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medversa.cli", "train", "--config", str(config), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_run_resumes_exactly(tmp_path, strategy):
    data = write_medinterp_mini(tmp_path / "data", n=6)
    straight = _config(tmp_path, data, "straight", strategy)
    _torchrun(straight)
    interrupted = _config(tmp_path, data, "interrupted", strategy)
    _torchrun(interrupted, "--stop-at", "2")
    assert not (tmp_path / "interrupted" / "checkpoint").exists()
    assert (tmp_path / "interrupted" / "state" / "step-000002" / "COMPLETE").is_file()
    _torchrun(interrupted, "--resume")

    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "interrupted")
    assert [r["step"] for r in a] == list(range(STEPS)) == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=False):
        assert (ra["task"], ra["modality"]) == (rb["task"], rb["modality"])
        assert ra["loss_total"] == rb["loss_total"], (ra, rb)
        assert ra["lr"] == rb["lr"]
    assert len({r["task"] for r in a}) > 1  # the sampler moved between tasks
    wa = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    wb = load_file(str(tmp_path / "interrupted" / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not differing, differing[:5]
    meta = json.loads((tmp_path / "straight" / "checkpoint" / "medversa-checkpoint.json").read_text())
    assert meta["training"]["steps"] == STEPS
    # The checkpoint declares what it was trained for and with, for the node (issue 11).
    declared = Declaration.from_meta(meta)
    trained = {key.split("/")[1] for key in meta["training"]["data"]["pools"]}
    assert {t.value for t in declared.tasks} == trained
    assert declared.context_fields == {Modality.CXR: ("age", "sex", "view"), Modality.DERM: (), Modality.CT: ()}
    assert declared.views_per_request == 1  # every radiograph of the data is its own record
    assert (tmp_path / "straight" / "plots" / "loss.png").stat().st_size > 1000
