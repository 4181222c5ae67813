"""The demo model the node ships with: present, small, documented, trained (not random), loaded by default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medversa.inference import BUNDLED_CHECKPOINT, ImageInput, TaskRequest, load_analyzer, model_identity
from medversa.inference.checkpoint import read_meta
from medversa.training.eval_metrics import dice
from medversa.training.train_config import TrainConfig, recipe_path

from .conftest import SHARED, need

MINI = SHARED / "data" / "medinterp-mini"


def test_bundled_checkpoint_is_small_documented_and_reproducible():
    meta = read_meta(BUNDLED_CHECKPOINT)
    assert meta["preset"] == "demo" and meta["stored_dtype"] == "float16"
    size = sum(p.stat().st_size for p in BUNDLED_CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 60 * 2**20
    card = (BUNDLED_CHECKPOINT / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "research licences" in card
    # The recipe(s) that built it are the shipped ones (a continued recipe ships those it continued too).
    assert (BUNDLED_CHECKPOINT / "recipe.yaml").is_file()
    for used_file in sorted(p.name for p in BUNDLED_CHECKPOINT.glob("recipe*.yaml")):
        name = "recipe" if used_file == "recipe.yaml" else "parent"
        used = TrainConfig.from_file(BUNDLED_CHECKPOINT / used_file).to_dict()
        shipped = TrainConfig.from_file(recipe_path(used["name"])).to_dict()
        assert {k: v for k, v in used.items() if k != "output_dir"} == {k: v for k, v in shipped.items()
                                                                        if k != "output_dir"}
        if name == "recipe":
            assert meta["training"]["steps"] == shipped["steps"] and meta["training"]["seed"] == shipped["seed"]
            assert meta["training"]["recipe"] == used["name"]
    manifest = json.loads((BUNDLED_CHECKPOINT / "data-manifest.json").read_text())
    assert manifest["split"] == "train"
    scores = json.loads((BUNDLED_CHECKPOINT / "holdout-scores.json").read_text())
    for key in ("chest_organ_segmentation/left_lung/dice", "skin_lesion_segmentation/skin_lesion/dice",
                "skin_lesion_classification/mean/f1", "anatomy_detection/mean/iou", "report_findings/all/bleu4"):
        assert {"mean", "ci_low", "ci_high", "n"} <= set(scores[key])


def test_the_default_model_is_the_bundled_demo():
    analyzer = load_analyzer(device="cpu")
    assert model_identity(analyzer) == read_meta(BUNDLED_CHECKPOINT)["weights_sha256"]
    assert analyzer.model.config.name == "demo"


@pytest.mark.slow
def test_the_demo_model_draws_lesions_and_lungs_it_was_trained_on():
    """Trained, not random: on training-split images (the holdout is for the report only) the lesion
    and the lungs are found; a random model draws nothing there (Dice ~0)."""
    mini = need(MINI)
    analyzer = load_analyzer(device="cpu")
    derm = [line.split(",")[0] for line in (mini / "derm" / "split.csv").read_text().splitlines()[1:]
            if line.endswith(",train")][:3]
    chest = [line.split(",")[0] for line in (mini / "cxr-organs" / "split.csv").read_text().splitlines()[1:]
             if line.endswith(",train")][:2]
    requests = [TaskRequest("skin_lesion_segmentation", "derm",
                            [ImageInput(np.asarray(Image.open(mini / "derm" / "images" / f"{i}.jpg").convert("RGB")))])
                for i in derm]
    requests += [TaskRequest("chest_organ_segmentation", "cxr",
                             [ImageInput(np.asarray(
                                 Image.open(mini / "cxr-organs" / "images" / f"{i}.png").convert("L")))],
                             targets=("left lung",)) for i in chest]
    answers = analyzer.run(requests)
    lesion = [dice(a.masks_2d[0].mask if a.masks_2d else np.zeros(1, bool),
                   np.asarray(Image.open(mini / "derm" / "masks" / f"{i}_lesion.png")) > 0)
              for i, a in zip(derm, answers[:3], strict=False)]
    lungs = []
    for i, a in zip(chest, answers[3:], strict=False):
        left = np.asarray(Image.open(mini / "cxr-organs" / "masks" / f"{i}_left_lung.png")) > 0
        lungs.append(dice(a.masks_2d[0].mask if a.masks_2d else np.zeros_like(left), left))
    assert np.mean(lesion) > 0.6, lesion
    # The left lung itself (test_bundled_sides.py checks each side and the heart apart).
    assert np.mean(lungs) > 0.6, lungs
