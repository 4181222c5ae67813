"""Holdout report of the bundled demo model and the specialist comparison (issue: the demo model).

Usage: python tools/demo_report.py [--no-readme] [--no-specialist] [--limit N] RUN_OR_CHECKPOINT DATA_DIR OUT_DIR
       python tools/demo_report.py --specialist RECIPE DATA_DIR OUT_DIR

The second form trains and scores only the specialist, with the budget the recipe's sampler
fixes (the same chest-organ step count the run's metrics.jsonl will show: batches are a
function of seed and step), so it can run beside the generalist's training; the first form
then reuses its specialist-scores.json when the budget matches.

RUN_OR_CHECKPOINT is a `medversa train` output folder (runs/demo) or its checkpoint folder
(runs/demo-tune/checkpoint: the run is the folder above it). The run's metrics.jsonl, and for a
continued recipe (init_checkpoint) those of the runs it builds on too, fix the specialist's budget: as many
chest radiographs as the generalist's chest-organ steps saw. DATA_DIR is medinterp-mini; OUT_DIR
gets holdout-scores.json/.md, holdout-predictions.jsonl (each case's answer text or per-class score,
with its reference), scores.png, specialist-comparison.md and MODEL_CARD.md
(the card tools/package_demo.py ships, written here for review), and the README's demo table is
regenerated (every holdout row: per class, per question, per caption, constant baselines, task
confusion) unless --no-readme. VQA and region captioning are scored like the other tasks, with
each question's most frequent training answer as their constant baseline. --no-specialist uses
OUT_DIR's specialist-scores.json only when its budget matches (no comparison otherwise); --limit N
scores the first N holdout records per task (a code check: implies --no-readme). Only the
holdout split is scored, and nothing here feeds back into training. Run it from the repository
root: recipes name their init_checkpoint relative to it.

Example (the continued run): MEDVERSA_THREADS=2 python tools/demo_report.py runs/demo-tune/checkpoint
../shared/data/medinterp-mini /tmp/demo-tune-report --no-readme
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from medversa.inference import MAX_VIEWS, Analyzer
from medversa.training.datasets.medinterp_mini import read_all
from medversa.training.evaluate import (
    METRIC_NAMES,
    constant_baselines,
    evaluate,
    majority_answers,
    render_markdown,
    training_volumes,
)
from medversa.training.specialist import (
    STRUCTURES,
    evaluate_specialist,
    train_specialist,
)
from medversa.training.train_config import TrainConfig


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


def parent_organ_steps(cfg: TrainConfig) -> int:
    """Chest-organ steps of every run a continued recipe builds on (its checkpoint's run and that run's own)."""
    if not cfg.init_checkpoint:
        return 0
    return sum(1 for _, row in step_rows(Path(cfg.init_checkpoint).parent)
               if row["task"] == "chest_organ_segmentation")


def specialist_scores(cfg: TrainConfig, data: Path, out: Path, organ_steps: int) -> dict:
    """Train the specialist for ``organ_steps`` steps and score it on the holdout (reused when done)."""
    from medversa.inference import create_config

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


#: Why a task is not declared by the demo checkpoint (what medinterp-mini lacks for it).
NOT_TRAINED = {
    "pathology_detection": "no pathology boxes in medinterp-mini (its boxes are lungs only)",
    "longitudinal_comparison": "no text describes a change between two studies (a patient's radiographs "
                               "share one set of clinical notes)",
    "report_impression": "no impression is written for any image in medinterp-mini (the IU X-ray texts have no "
                         "images; the radiographs have clinical notes only); trained on the IU texts alone, asked "
                         "of a radiograph it answered a class name, so `demo-polish` no longer declares it",
    "report_full": "as the impression: no image in medinterp-mini has a findings + impression report",
}
#: The data each declared task trained on (docs/training.md, "What medinterp-mini gives each task").
TRAINED_ON = {
    "chest_organ_segmentation": "JSRT/SCR left lung, right lung, heart masks; V7 both-lung masks (cxr-notes)",
    "anatomy_detection": "cxr-notes left/right lung boxes",
    "report_findings": "cxr-notes clinical notes (with age, sex, view; `demo-context` leaves each out at "
                       "random); IU X-ray findings (text only, in `demo` and `demo-tune`; later runs train on "
                       "the radiographs' notes only)",
    "chest_pathology_classification": "cxr-notes `finding` mapped to the 33 classes: pneumonia, no finding "
                                      "(context as for findings)",
    "vqa": "closed questions from labels: pneumonia yes/no, frontal/lateral view (cxr-notes); lesion class "
           "yes/no (derm)",
    "region_captioning": "lung boxes (cxr-notes) and boxes around the SCR masks, answered with the structure",
    "skin_lesion_classification": "PH2 + ISIC 2017 diagnoses (melanoma, melanocytic nevus, benign keratosis)",
    "skin_lesion_segmentation": "PH2 + ISIC 2017 lesion masks",
    "abdominal_organ_segmentation": "the one TotalSegmentator example CT (liver, kidney, spleen, pancreas)",
}


def _headline(scores: dict, task: str) -> str:
    """The task's main holdout figures with CIs (mean per metric, confusion), or why there are none.

    Where a metric has both an "all" (over cases) and a "mean" (over classes, questions) row, the
    latter is labelled macro.
    """
    parts = []
    keys = {tuple(k.split("/")) for k in scores if k.count("/") == 2}
    for key, value in scores.items():
        t, name, metric = key.split("/") if key.count("/") == 2 else ("", "", "")
        if t == task and (name in ("mean", "all", "constant_baseline") or name in ("mean_training_ct",
                                                                                   "all_training_ct")):
            macro = name.startswith("mean") and (t, name.replace("mean", "all"), metric) in keys
            label = (("constant baseline " if name == "constant_baseline" else "") + ("macro " if macro else "")
                     + METRIC_NAMES.get(metric, metric))
            where = " (training CT)" if "training_ct" in name else ""
            parts.append(f"{label}{where} {_fmt(value)}")
    if len(parts) == 1 and (task, "all", "confusion") in keys:
        parts[0] += " (asked of holdout radiographs without this section: no reference text to score)"
    return "; ".join(parts) or "not scored on the holdout (no holdout records of this kind)"


def runs_of(run: Path) -> list[Path]:
    """The run and, for a continued recipe (init_checkpoint), every run it builds on, oldest first."""
    chain = [run]
    while True:
        cfg = TrainConfig.from_file(chain[0] / "train-config.yaml")
        if not cfg.init_checkpoint:
            return chain
        parent = Path(cfg.init_checkpoint).parent
        if parent in chain or len(chain) > 20:
            raise ValueError(f"{run}: the init_checkpoint chain loops at {parent}")
        chain.insert(0, parent)


def ancestor_recipe_names(count: int) -> list[str]:
    """File names the bundled model ships its recipes under, oldest first: the run's own is recipe.yaml, the one
    it continued recipe-parent.yaml, that one's recipe-parent-2.yaml..."""
    names = ["recipe.yaml", "recipe-parent.yaml", *[f"recipe-parent-{i}.yaml" for i in range(2, count)]]
    return list(reversed(names[:count]))


def step_rows(run: Path) -> Iterator[tuple[Path, dict]]:
    """(run folder, metrics.jsonl row) of every step of the run and of the runs it continued, oldest first."""
    for folder in runs_of(run):
        log = folder / "metrics.jsonl"
        if not log.is_file():
            raise ValueError(f"{folder}: no metrics.jsonl to count its steps")
        for line in log.read_text().splitlines():
            yield folder, json.loads(line)


def step_minutes(run: Path) -> float:
    """Minutes of training steps of the run and every run it continued (the budget's measure)."""
    return sum(row["seconds"] for _, row in step_rows(run)) / 60


def minutes_table(run: Path) -> list[str]:
    """Steps and wall time per stage and per task, from the metrics.jsonl of the run (and those it continued)."""
    by_stage: dict[str, list] = {}
    by_task: dict[str, list] = {}
    recipes = {folder: TrainConfig.from_file(folder / "train-config.yaml").name for folder in runs_of(run)}
    for folder, r in step_rows(run):
        by_stage.setdefault(f"{recipes[folder]}: {r.get('stage', 'all')}", []).append(r["seconds"])
        by_task.setdefault(r["task"], []).append(r["seconds"])
    lines = ["| recipe: stage | steps | wall time of its steps (min) |", "|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {sum(v) / 60:.1f} |" for k, v in by_stage.items()]
    lines += ["", "| task | steps | min | s/step (median) |", "|---|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {sum(v) / 60:.1f} | {sorted(v)[len(v) // 2]:.2f} |"
              for k, v in sorted(by_task.items(), key=lambda kv: -sum(kv[1]))]
    return lines


def tasks_table(meta: dict, scores: dict, run: Path) -> list[str]:
    steps = Counter(row["task"] for _, row in step_rows(run))
    lines = ["| task (declared) | trained on | steps | holdout, 95% CI |", "|---|---|---|---|"]
    for task in meta.get("declared_tasks", []):
        lines.append(f"| {task.replace('_', ' ')} | {TRAINED_ON.get(task, '?')} | {steps.get(task, 0)} | "
                     f"{_headline(scores, task)} |")
    return lines


def readme_table(scores: dict) -> list[str]:
    """Every holdout row (per class included), as the README shows them."""
    lines = ["| task | class | metric | demo model, mean [95% CI] | n |", "|---|---|---|---|---|"]
    for key, value in scores.items():
        if key.count("/") != 2:
            continue
        task, name, metric = key.split("/")
        lines.append(f"| {task.replace('_', ' ')} | {name.replace('_', ' ')} | {METRIC_NAMES.get(metric, metric)} | "
                     f"{_fmt(value)} | "
                     f"{value['n']} |")
    return lines


def update_readme(readme: Path, block: list[str]) -> None:
    """Replace the text between the demo-table markers of the README (nothing else changes)."""
    start, end = "<!-- demo-model-table:start -->", "<!-- demo-model-table:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + tail)


def model_card(meta: dict, run: Path, report: Path) -> str:
    """MODEL_CARD.md: what the model is, every task with its data and holdout score, what was not trained."""
    scores = json.loads((report / "holdout-scores.json").read_text())
    declared = set(meta.get("declared_tasks", []))
    from medversa.inference import Task

    chain = [json.loads((f / "checkpoint" / "medversa-checkpoint.json").read_text())["training"]
             for f in runs_of(run)]
    # The steps' own times (metrics.jsonl): a checkpoint's "minutes" is the wall time of the process that
    # wrote it, which leaves out what ran before a resume.
    minutes = step_minutes(run)
    recipes = " then ".join(f"`medversa train --recipe {t['recipe']}` (seed {t['seed']}, {t['steps']} steps)"
                            for t in chain)

    card = [
        "# MedVersa demo model",
        "",
        "**A demonstration model. Not for clinical use.** It is the small `demo` preset "
        f"({meta['preset']}) trained from scratch in {minutes:.1f} minutes of training steps on 2 CPU cores, on the "
        "train split of medinterp-mini: a few hundred public research images (JSRT/SCR, the COVID-19 image data "
        "collection, IU X-ray report texts, PH2 and ISIC 2017 dermoscopy, one TotalSegmentator example CT). "
        "Those data are under research licences (see medinterp-mini's SOURCES.md): so is this model. Its answers "
        "show what the node does with a trained model; they are not diagnoses.",
        "",
        f"- Recipes: {recipes}; `recipe.yaml` is the last one's, `recipe-parent.yaml` the one it "
        "continued, `recipe-parent-2.yaml` the one before that, and so on; deterministic for the seeds and "
        "thread count.",
        "- Data manifest: `data-manifest.json` (SHA-256 of every file read; the holdout split was never trained "
        "or tuned on).",
        f"- Weights: `model.safetensors` stored as {meta['stored_dtype']}, SHA-256 `{meta['weights_sha256']}`.",
        f"- Clinical context it reads: {json.dumps(meta.get('context_fields'))}.",
        f"- Chest views per report or classification request: {meta.get('views_per_request') or f'up to {MAX_VIEWS}'} "
        "(as trained; the node sends no more, frontal first).",
        "- Holdout scores with 95% bootstrap CIs: `holdout-scores.md` / `.json`; generalist vs specialist: "
        "`specialist-comparison.md`; loss curve: `loss.png`.",
        "",
        "## Tasks it declares, the data that trained them, holdout scores",
        "",
        *tasks_table(meta, scores, run),
        "",
        "## Not trained (not declared: the node does not route these to this model)",
        "",
        *[f"- **{t.value.replace('_', ' ')}**: {NOT_TRAINED.get(t.value, 'no data in medinterp-mini')}"
          for t in Task if t.value not in declared],
        "",
        (report / "holdout-scores.md").read_text(),
        "",
    ]
    if (report / "specialist-comparison.md").is_file():
        card += ["## Generalist vs specialist (chest organs)", "", (report / "specialist-comparison.md").read_text()]
    card += ["## Where the training minutes went", "", *minutes_table(run), ""]
    if (report / "limitations.md").is_file():  # written by whoever inspected the run
        card += [(report / "limitations.md").read_text()]
    return "\n".join(card)


def resolve_run(path: Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint folder)`` of a run folder or of a checkpoint folder inside one."""
    path = Path(path)
    inside_run = (path.parent / "train-config.yaml").is_file() and not (path / "train-config.yaml").is_file()
    if (path / "medversa-checkpoint.json").is_file() or inside_run:
        run, checkpoint = path.parent, path
    else:
        run, checkpoint = path, path / "checkpoint"
    for needed in (run / "train-config.yaml", run / "metrics.jsonl", checkpoint / "medversa-checkpoint.json"):
        if not needed.is_file():
            raise ValueError(f"{path}: no {needed} (give a `medversa train` output folder or its checkpoint folder)")
    return run, checkpoint


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage=__doc__.split("\n\n")[1])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
    parser.add_argument("--no-specialist", action="store_true", help="never train the specialist here")
    parser.add_argument("--limit", type=int, default=None, help="first N holdout records per task (code check)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "--specialist":
        torch.set_num_threads(int(os.environ.get("MEDVERSA_THREADS", "1")))
        recipe, data, out = Path(argv[2]), Path(argv[3]), Path(argv[4])
        out.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig.from_file(recipe)
        cfg.datasets = [type(d)(d.name, str(data), d.split) for d in cfg.datasets]
        spec = specialist_scores(cfg, data, out, organ_steps_of(cfg) + parent_organ_steps(cfg))
        print(json.dumps(spec["budget"]))
        return 0
    if len(argv) < 4 or "-h" in argv or "--help" in argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    args = _arguments(argv[1:])
    try:
        run, checkpoint = resolve_run(args.run)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data, out = args.data, args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("MEDVERSA_THREADS", "2")))
    cfg = TrainConfig.from_file(run / "train-config.yaml")
    holdout = read_all(data, "holdout")

    t0 = time.time()
    analyzer = Analyzer.from_checkpoint(checkpoint, device="cpu")
    train = read_all(data, "train")
    predictions: list[dict] = []
    scores = evaluate(analyzer, holdout, limit=args.limit, baselines=constant_baselines(train),
                      majority=majority_answers(train), predictions=predictions)
    scores.update(training_volumes(analyzer, train, limit=args.limit))
    eval_minutes = (time.time() - t0) / 60
    partial = f", first {args.limit} records per task (code check)" if args.limit else ""
    title = f"{cfg.name} checkpoint on medinterp-mini holdout{partial}"
    (out / "holdout-scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    (out / "holdout-predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (out / "holdout-scores.md").write_text(render_markdown(scores, title) + "\n")
    from medversa.training.plots import plot_scores

    plot_scores({k: v for k, v in scores.items() if "/" in k}, out / "scores.png", title)

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    organ_steps = sum(1 for r in rows if r["task"] == "chest_organ_segmentation") + parent_organ_steps(cfg)
    batch = cfg.batch_size["cxr"]
    lines: list[str] = []
    cached = out / "specialist-scores.json"
    if not args.no_specialist or (cached.is_file() and json.loads(cached.read_text()).get("budget", {})
                                  .get("organ_steps") == organ_steps):
        spec = specialist_scores(cfg, data, out, organ_steps)
        lines = comparison_table(scores, spec, organ_steps, batch, spec["budget"]["minutes"])
        (out / "specialist-comparison.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    else:
        (out / "specialist-comparison.md").unlink(missing_ok=True)
        print(f"no specialist comparison: {cached} is not for {organ_steps} chest-organ steps (--no-specialist)")
    meta = json.loads((checkpoint / "medversa-checkpoint.json").read_text())
    (out / "MODEL_CARD.md").write_text(model_card(meta, run, out))
    if not (args.no_readme or args.limit):
        update_readme(Path(__file__).resolve().parents[1] / "README.md", readme_table(scores) + [""] + lines)
    print(f"evaluation took {eval_minutes:.1f} min; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
