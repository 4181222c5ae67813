"""Copy a finished `medversa train --recipe demo` run into inference/assets/demo-model.

Usage: python tools/package_demo.py RUN_DIR DATA_DIR REPORT_DIR

Writes the checkpoint (config, fp16 weights, tokenizer, medversa-checkpoint.json),
the recipe it was trained with, a data manifest (every training file's SHA-256,
split files included), the holdout scores and specialist comparison from
tools/demo_report.py, the loss curve, and MODEL_CARD.md with the notice that this
is a demonstration model, not for clinical use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ASSET = Path(__file__).resolve().parents[1] / "inference" / "assets" / "demo-model"
LIMIT_MB = 60


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_manifest(data: Path, meta: dict) -> dict:
    """What the demo saw: the medinterp-mini train split, file by file (holdout files listed apart, unused)."""
    from medversa.training.datasets.medinterp_mini import read_splits

    files = {}
    for folder in ("cxr-organs", "cxr-notes", "derm"):
        splits = read_splits(data / folder)
        files[folder] = {"split.csv": _sha(data / folder / "split.csv"),
                         "train_ids": sum(1 for s in splits.values() if s == "train"),
                         "holdout_ids_not_used": sum(1 for s in splits.values() if s == "holdout")}
    for rel in ("iu-reports/reports.jsonl", "ct/example_ct.nii.gz", "ct/example_ct_organs.nii.gz",
                "cxr-notes/metadata.csv", "cxr-notes/boxes.csv", "derm/labels.csv"):
        files[rel] = _sha(data / rel)
    return {"dataset": "medinterp-mini", "split": "train", "files": files, "pools": meta["training"]["data"]["pools"]}


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    run, data, report = (Path(a) for a in argv[1:])
    checkpoint = run / "checkpoint"
    meta = json.loads((checkpoint / "medversa-checkpoint.json").read_text())
    if ASSET.exists():
        shutil.rmtree(ASSET)
    shutil.copytree(checkpoint, ASSET)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_report import ancestor_recipe_names, runs_of

    chain = runs_of(run)  # a continued recipe ships every recipe it builds on too
    for folder, name in zip(chain, ancestor_recipe_names(len(chain)), strict=True):
        shutil.copy(folder / "train-config.yaml", ASSET / name)
    (ASSET / "data-manifest.json").write_text(json.dumps(data_manifest(data, meta), indent=2) + "\n")
    for name in ("holdout-scores.json", "holdout-scores.md", "specialist-comparison.md", "specialist-scores.json",
                 "scores.png"):
        if (report / name).is_file():
            shutil.copy(report / name, ASSET / name)
    shutil.copy(run / "plots" / "loss.png", ASSET / "loss.png")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_report import model_card

    (ASSET / "MODEL_CARD.md").write_text(model_card(meta, run, report))
    size = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file()) / 2**20
    print(f"packaged {ASSET} ({size:.1f} MB)")
    if size > LIMIT_MB:
        print(f"error: the bundled model is over {LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
