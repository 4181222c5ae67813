"""Holdout report of the bundled demo model and the specialist comparison (issue: the demo model).

Usage: python tools/demo_report.py RUN_DIR DATA_DIR OUT_DIR

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


def main(argv: list[str]) -> int:
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
    t0 = time.time()
    specialist = train_specialist(read_all(data, "train"), analyzer.model.config, organ_steps, batch, cfg.seed,
                                  cfg.optimizer)
    train_minutes = (time.time() - t0) / 60
    spec = evaluate_specialist(specialist, holdout, analyzer.model.config)
    lines = comparison_table(scores, spec, organ_steps, batch, train_minutes)
    (out / "specialist-comparison.md").write_text("\n".join(lines) + "\n")
    (out / "specialist-scores.json").write_text(json.dumps(spec, indent=2) + "\n")
    print("\n".join(lines))
    print(f"evaluation took {eval_minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
