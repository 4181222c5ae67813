"""Holdout report of the bundled demo model and the specialist comparison (issue: the demo model).

Usage: python tools/demo_report.py RUN_DIR DATA_DIR OUT_DIR
       python tools/demo_report.py --specialist RECIPE DATA_DIR OUT_DIR

The second form trains and scores only the specialist, with the budget the recipe's sampler
fixes (the same chest-organ step count the run's metrics.jsonl will show: batches are a
function of seed and step), so it can run beside the generalist's training; the first form
then reuses its specialist-scores.json when the budget matches.

RUN_DIR is the `medversa train --recipe demo` output (its metrics.jsonl fixes the
specialist's budget: as many chest radiographs as the generalist's chest-organ
steps saw); DATA_DIR is medinterp-mini; OUT_DIR gets holdout-scores.json,
holdout-scores.md and specialist-comparison.md. Only the holdout split is scored,
and nothing here feeds back into training.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from medversa.inference.analyzer import Analyzer
from medversa.training.config import TrainConfig
from medversa.training.datasets.medinterp_mini import read_all
from medversa.training.evaluate import evaluate, render_markdown
from medversa.training.specialist import (
    STRUCTURES,
    evaluate_specialist,
    train_specialist,
)


def _fmt(v: dict) -> str:
    return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"


def comparison_table(scores: dict, spec: dict, organ_steps: int, batch: int, minutes: float) -> list[str]:
    """Dice per structure, generalist vs specialist (the generalist's "mean" also covers other
    chest datasets' structures, so only the three shared structures are compared)."""
    lines = [
        "| Structure (Dice, holdout) | MedVersa demo (generalist) | 2D UNet alone (specialist) |",
        "|---|---|---|",
    ]
    n = 0
    for s in STRUCTURES:
        key = f"chest_organ_segmentation/{s.replace(' ', '_')}/dice"
        lines.append(f"| {s} | {_fmt(scores[key])} | {_fmt(spec[key])} |")
        n = spec[key]["n"]
    lines += ["", (f"Budget: the same {organ_steps} chest-organ steps of {batch} radiographs for both (the "
                   f"specialist trained in {minutes:.1f} min); 95% bootstrap CIs from 1,000 resamples; "
                   f"n = {n} holdout images (JSRT/SCR).")]
    return lines


def organ_steps_of(cfg: TrainConfig) -> int:
    """Chest-organ steps the recipe's sampler will draw (a pure function of seed, step and stages)."""
    from medversa.training.sampler import DomainAwareSampler
    from medversa.training.trainer import load_records

    sampler = DomainAwareSampler(load_records(cfg), cfg.seed, cfg.batch_size, cfg.modality_weights,
                                 cfg.task_weights, stages=cfg.stages, balanced=cfg.balanced)
    return sum(1 for step in range(cfg.steps) if sampler.choose(step).task.value == "chest_organ_segmentation")


def specialist_scores(cfg: TrainConfig, data: Path, out: Path, organ_steps: int) -> dict:
    """Train the specialist for ``organ_steps`` steps and score it on the holdout (reused when done)."""
    from medversa.inference.presets import create_config

    path = out / "specialist-scores.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("budget", {}).get("organ_steps") == organ_steps:
            return done
    config = create_config(cfg.preset)
    batch = cfg.batch_size["cxr"]
    t0 = time.time()
    specialist = train_specialist(read_all(data, "train"), config, organ_steps, batch, cfg.seed, cfg.optimizer)
    minutes = (time.time() - t0) / 60
    spec = evaluate_specialist(specialist, read_all(data, "holdout"), config)
    spec["budget"] = {"organ_steps": organ_steps, "batch": batch, "minutes": round(minutes, 1)}
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "--specialist":
        torch.set_num_threads(int(os.environ.get("MEDVERSA_THREADS", "1")))
        recipe, data, out = Path(argv[2]), Path(argv[3]), Path(argv[4])
        out.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig.from_file(recipe)
        cfg.datasets = [type(d)(d.name, str(data), d.split) for d in cfg.datasets]
        spec = specialist_scores(cfg, data, out, organ_steps_of(cfg))
        print(json.dumps(spec["budget"]))
        return 0
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    run, data, out = (Path(a) for a in argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("MEDVERSA_THREADS", "2")))
    cfg = TrainConfig.from_file(run / "train-config.yaml")
    holdout = read_all(data, "holdout")

    t0 = time.time()
    analyzer = Analyzer.from_checkpoint(run / "checkpoint", device="cpu")
    scores = evaluate(analyzer, holdout)
    eval_minutes = (time.time() - t0) / 60
    (out / "holdout-scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    (out / "holdout-scores.md").write_text(render_markdown(scores, "demo model on medinterp-mini holdout") + "\n")
    from medversa.training.plots import plot_scores

    plot_scores({k: v for k, v in scores.items() if "/" in k}, out / "scores.png", "demo model, medinterp-mini holdout")

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    organ_steps = sum(1 for r in rows if r["task"] == "chest_organ_segmentation")
    batch = cfg.batch_size["cxr"]
    spec = specialist_scores(cfg, data, out, organ_steps)
    lines = comparison_table(scores, spec, organ_steps, batch, spec["budget"]["minutes"])
    (out / "specialist-comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"evaluation took {eval_minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
