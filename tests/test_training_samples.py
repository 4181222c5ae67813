"""Samples, the domain-aware sampler, the schedule and the batch layout the trainer relies on."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medversa.inference import DET_TOKEN, NA_TOKEN, SEG2D_TOKEN, TEMPLATES, Modality, Task, TaskFamily, build_model
from medversa.inference.labels import label_tokens
from medversa.training.batching import IGNORE, collate
from medversa.training.datasets.medinterp_mini import read_all
from medversa.training.objective import TrainingObjective
from medversa.training.records import (
    ArrayImage,
    ArrayMask,
    DetectionRecord,
    SegmentationRecord,
)
from medversa.training.sampler import DomainAwareSampler
from medversa.training.samples import build_sample, tasks_for
from medversa.training.schedule import learning_rate
from medversa.training.train_config import OptimizerConfig, TrainConfig, recipe_path

from .training_fixtures import write_medinterp_mini


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_medinterp_mini(tmp_path_factory.mktemp("mini"), n=6)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny")


def test_detection_sample_answers_each_class_with_its_box_or_na():
    rec = DetectionRecord("t", "r", Modality.CXR, "train", ArrayImage(np.zeros((100, 200), np.uint8)), 200, 100,
                          {"left lung": [(100.0, 10.0, 180.0, 90.0)]}, candidates=("left lung", "right lung", "heart"))
    seen = set()
    for seed in range(30):
        s = build_sample(rec, Task.ANATOMY_DETECTION, np.random.default_rng(seed))
        labels = label_tokens(s.answer)
        assert [t for t, _ in labels].count(DET_TOKEN) == len(s.boxes)
        for token, label in labels:
            assert token == (DET_TOKEN if label == "left lung" else NA_TOKEN)
            assert label in s.question
            seen.add(label)
        if s.boxes:
            assert s.boxes == [(0.5, 0.1, 0.9, 0.9)]
        assert s.question.split("<img0>")[0] or s.question  # a Table 5 template with the image tag
        assert "<img0>" in s.question
    assert seen == {"left lung", "right lung", "heart"}


def test_chest_flip_swaps_left_and_right_labels():
    mask = np.zeros((8, 8), bool)
    mask[:, 6:] = True  # the patient's left lung lies on the image's right
    rec = SegmentationRecord("t", "r", Modality.CXR, "train", ArrayImage(np.zeros((8, 8), np.uint8)),
                             {"left lung": ArrayMask(mask)})
    outcomes = set()
    for seed in range(20):
        s = build_sample(rec, Task.CHEST_ORGAN_SEGMENTATION, np.random.default_rng(seed))
        assert s.answer.endswith(SEG2D_TOKEN)
        flipped = s.masks[0][:, :2].all()
        assert ("right lung" in s.answer) == flipped
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_templates_are_drawn_from_table_5(mini):
    records = read_all(mini, "train")
    seg = next(r for r in records if r.source.endswith("cxr-organs"))
    questions = {build_sample(seg, Task.CHEST_ORGAN_SEGMENTATION, np.random.default_rng(s)).question for s in range(40)}
    assert len(questions) > 10
    assert all(any(q.split("<img0>")[0].startswith(t.split("-*-")[0]) for t in TEMPLATES[Task.CHEST_ORGAN_SEGMENTATION])
               for q in questions)


def test_sampler_batches_hold_one_task_and_modality_and_are_reproducible(mini):
    records = read_all(mini, "train")
    sampler = DomainAwareSampler(records, seed=3, batch_size={"cxr": 3, "derm": 2, "ct": 1})
    pools = set()
    for step in range(40):
        batch = sampler.samples(step)
        assert len({(s.task, s.modality) for s in batch}) == 1
        assert len(batch) == sampler.batch_size_for(batch[0].modality)
        pools.add((batch[0].modality, batch[0].task))
    assert len(pools) >= 6
    again = DomainAwareSampler(records, seed=3, batch_size={"cxr": 3, "derm": 2, "ct": 1})
    for step in (0, 7, 39):
        a, b = sampler.samples(step), again.samples(step)
        assert [s.question for s in a] == [s.question for s in b]
        assert all(np.array_equal(x.images[0], y.images[0]) for x, y in zip(a, b, strict=False))


def test_ranks_share_the_task_and_draw_different_records(mini):
    records = read_all(mini, "train")
    ranks = [DomainAwareSampler(records, 5, 2, rank=r, world_size=2, augment=False) for r in (0, 1)]
    differ = 0
    for step in range(20):
        a, b = (s.samples(step) for s in ranks)
        assert a[0].task is b[0].task
        differ += [s.record_id for s in a] != [s.record_id for s in b]
    assert differ > 5


def test_holdout_never_reaches_training(mini):
    records = read_all(mini, "train")
    holdout = {r.record_id for r in read_all(mini, "holdout")}
    assert holdout and not holdout & {r.record_id for r in records}
    cfg = TrainConfig.from_dict({"datasets": [{"name": "medinterp-mini", "root": str(mini), "split": "holdout"}],
                                 "steps": 2, "optimizer": {"warmup_steps": 1}})
    from medversa.training.trainer import load_records

    with pytest.raises(ValueError, match="holdout"):
        load_records(cfg)


def test_schedule_warms_up_from_1e7_then_cosine_to_3e6():
    cfg = OptimizerConfig(warmup_steps=10)
    assert learning_rate(0, 100, cfg) == pytest.approx(1e-7)
    assert learning_rate(10, 100, cfg) == pytest.approx(3e-4)
    assert learning_rate(99, 100, cfg) == pytest.approx(3e-6)
    rates = [learning_rate(s, 100, cfg) for s in range(100)]
    assert max(rates) == pytest.approx(3e-4)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))  # cosine part never rises
    assert all(a < b for a, b in itertools.pairwise(rates[:11]))  # warm-up rises


def test_config_rejects_unknown_keys_and_the_demo_recipe_loads():
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"stepz": 3})
    demo = TrainConfig.from_file(recipe_path("demo"))
    assert demo.preset == "demo" and demo.datasets[0].split == "train"
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_path("nope")


def test_batch_masks_prompt_and_keeps_task_token_targets(mini, tiny):
    model, tok = tiny
    records = read_all(mini, "train")
    det = next(r for r in records if isinstance(r, DetectionRecord))
    samples = [build_sample(det, Task.ANATOMY_DETECTION, np.random.default_rng(s)) for s in range(4)]
    batch = collate(samples, tok, model.config, 128)
    assert len(batch.det_positions) == sum(len(s.boxes) for s in samples) == len(batch.det_boxes)
    for b, pos in batch.det_positions:
        assert batch.ids[b, pos] == tok.ids.det and batch.labels[b, pos] == tok.ids.det
    first_answer = (batch.labels[0] != IGNORE).nonzero()[0].item()
    assert tok.decode(batch.ids[0, :first_answer].tolist()).endswith("###Assistant:")
    assert (batch.ids[0] == tok.ids.image).sum() == model.config.num_visual_tokens


def test_every_pool_trains_and_losses_fall_on_a_repeated_batch(mini, tiny):
    model, tok = tiny
    records = read_all(mini, "train")
    objective = TrainingObjective(model, tok.ids.image).eval()  # no dropout: a deterministic descent check
    for p in model.parameters():
        p.requires_grad = True
    sampler = DomainAwareSampler(records, 0, {"cxr": 2, "derm": 2, "ct": 1})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for (_modality, task), pool in sampler.pools.items():
        samples = [build_sample(pool.records[0], task, np.random.default_rng(1), augment=False)]
        batch = collate(samples, tok, model.config, 160)
        first = None
        for _ in range(4):
            losses = objective(batch)
            losses["total"].backward()
            opt.step()
            opt.zero_grad()
            first = first if first is not None else {k: float(v.detach()) for k, v in losses.items()}
        with torch.no_grad():
            last = {k: float(v) for k, v in objective(batch).items()}
        assert last["total"] < first["total"], (task, first, last)
        if tasks_for(pool.records[0])[0].family is TaskFamily.SEGMENTATION:
            assert "seg" in last
        if task is Task.ANATOMY_DETECTION:
            assert "det" in last


def test_gradient_checkpointing_gives_the_same_gradients(mini):
    from medversa.training.trainer import Trainer

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        cfg = TrainConfig.from_dict({
            "preset": "tiny", "steps": 2, "seed": 1, "batch_size": 2, "max_length": 96,
            "gradient_checkpointing": checkpointing, "optimizer": {"warmup_steps": 1},
            "datasets": [{"name": "medinterp-mini", "root": str(mini), "split": "train"}],
            "output_dir": str(mini.parent / f"gc-{checkpointing}")})
        trainer = Trainer(cfg)
        batch = collate(trainer.sampler.samples(0), trainer.tokenizer, trainer.model.config, 96)
        trainer.objective.train()  # HF checkpoints only in training mode...
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Dropout) or "DropPath" in type(module).__name__:
                module.eval()  # ...but without dropout both runs compute the same function
        trainer.objective(batch)["total"].backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    lora = [n for n in plain if "lora_" in n]
    assert lora and plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name


def test_bf16_autocast_steps_train_every_pool_with_lora_only(mini):
    """The GPU recipe's step (bf16 autocast, LoRA only in the LLM) run on the CPU: every pool gives a
    finite loss, and the frozen base weights of the LLM do not move."""
    from medversa.training.trainer import Trainer

    cfg = TrainConfig.from_dict({
        "preset": "tiny", "steps": 6, "seed": 3, "batch_size": 2, "max_length": 96, "bf16": True,
        "train_llm_base": False, "optimizer": {"warmup_steps": 1},
        "datasets": [{"name": "medinterp-mini", "root": str(mini), "split": "train"}],
        "output_dir": str(mini.parent / "bf16")})
    trainer = Trainer(cfg)
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
            if n.startswith("llm.") and "lora_" not in n}
    rows = [trainer.train_step() for _ in range(6)]
    assert all(math.isfinite(r["loss_total"]) for r in rows), rows
    assert len({r["task"] for r in rows}) > 1
    for name, value in trainer.model.named_parameters():
        if name in base:
            assert torch.equal(value, base[name]), name


def test_a_recipe_sets_the_inference_settings_its_checkpoint_carries(mini):
    from medversa.inference import load_checkpoint
    from medversa.training.trainer import Trainer

    base = {"preset": "tiny", "steps": 1, "seed": 1, "batch_size": 2, "max_length": 96,
            "optimizer": {"warmup_steps": 0}, "task_weights": {"anatomy_detection": 1.0},
            "datasets": [{"name": "medinterp-mini", "root": str(mini), "split": "train"}]}
    first = Trainer(TrainConfig.from_dict({**base, "output_dir": str(mini.parent / "gen-a"),
                                           "generation": {"duplicate_box_iou": 0.5}})).fit()
    model, _ = load_checkpoint(first)
    assert model.config.generation.duplicate_box_iou == 0.5
    # A continued run keeps its starting checkpoint's settings unless its recipe names them.
    second = Trainer(TrainConfig.from_dict({**base, "output_dir": str(mini.parent / "gen-b"),
                                            "init_checkpoint": str(first)})).fit()
    assert load_checkpoint(second)[0].config.generation.duplicate_box_iou == 0.5
    with pytest.raises(ValueError, match="generation has unknown"):
        TrainConfig.from_dict({**base, "generation": {"beam_width": 3}})
