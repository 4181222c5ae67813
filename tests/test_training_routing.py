"""Staged training, balanced sampling, routing codes and the task-confusion metric (issue 12).

The generalist must carry the structure named in its answer into the task token's state; these
tests pin the training-side means (stages, codes, balance) and the metric that checks every task
answers in its own form.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medversa.inference import Answer, Box, Mask2D, Modality, Task, build_model
from medversa.training.batching import collate, crop_volumes
from medversa.training.evaluate import confused, constant_baselines
from medversa.training.objective import TrainingObjective
from medversa.training.records import (
    ArrayImage,
    ArrayMask,
    ClassificationRecord,
    DetectionRecord,
    ReportRecord,
    SegmentationRecord,
    TextRecord,
)
from medversa.training.sampler import DomainAwareSampler
from medversa.training.samples import build_sample
from medversa.training.train_config import StageConfig, TrainConfig
from medversa.training.trainer import Trainer, param_groups


def _chest(i: int) -> SegmentationRecord:
    image = np.full((64, 64), 40 + i, dtype=np.uint8)
    left, right, heart = (np.zeros((64, 64), bool) for _ in range(3))
    left[10:50, 36:60], right[10:50, 4:28], heart[30:50, 24:44] = True, True, True
    masks = {"left lung": ArrayMask(left), "right lung": ArrayMask(right), "heart": ArrayMask(heart)}
    return SegmentationRecord("t", f"c{i}", Modality.CXR, "train", ArrayImage(image), masks)


def _lungs(i: int) -> SegmentationRecord:
    both = np.zeros((64, 64), bool)
    both[10:50, 4:60] = True
    return SegmentationRecord("t", f"l{i}", Modality.CXR, "train", ArrayImage(np.zeros((64, 64), np.uint8)),
                              {"lungs": ArrayMask(both)})


def test_stages_must_cover_the_steps_and_pick_their_own_tasks() -> None:
    with pytest.raises(ValueError, match="sum to 5"):
        TrainConfig.from_dict({"steps": 10, "optimizer": {"warmup_steps": 1},
                               "stages": [{"name": "a", "steps": 5}]})
    records = [_chest(i) for i in range(3)] + [
        ReportRecord("t", "r", Modality.CXR, "train", [ArrayImage(np.zeros((8, 8), np.uint8))], findings="x.")]
    stages = [StageConfig(name="route", steps=20, task_weights={"report_findings": 0})]
    sampler = DomainAwareSampler(records, 0, 2, stages=stages)
    assert {sampler.choose(s).task for s in range(20)} == {Task.CHEST_ORGAN_SEGMENTATION}
    assert Task.REPORT_FINDINGS in {sampler.choose(s).task for s in range(20, 80)}


def test_balanced_sampling_draws_each_structure_equally_and_asks_for_it() -> None:
    records = [_chest(i) for i in range(2)] + [_lungs(i) for i in range(8)]
    sampler = DomainAwareSampler(records, 3, 4, balanced=["chest_organ_segmentation"], augment=False)
    asked = Counter(s.structures[0] for step in range(200) for s in sampler.samples(step))
    assert set(asked) == {"left lung", "right lung", "heart", "lungs"}
    assert max(asked.values()) / min(asked.values()) < 1.3  # unbalanced: "lungs" would be 80 %
    again = DomainAwareSampler(records, 3, 4, balanced=["chest_organ_segmentation"], augment=False)
    assert [s.question for s in again.samples(7)] == [s.question for s in sampler.samples(7)]


def _seg_batch(structures: list[str]):
    model, tokenizer = build_model("tiny")
    record = _chest(0)
    samples = [build_sample(record, Task.CHEST_ORGAN_SEGMENTATION, np.random.default_rng(i), False, structure=s)
               for i, s in enumerate(structures)]
    return model, collate(samples, tokenizer, model.config, 256), tokenizer


def test_teacher_conditioning_feeds_codes_and_the_llm_learns_them_from_the_route_loss() -> None:
    torch.manual_seed(0)
    model, batch, tokenizer = _seg_batch(["left lung", "right lung"])
    assert batch.seg_structures == ["left lung", "right lung"]
    objective = TrainingObjective(model, tokenizer.ids.image, {"route": 1.0})
    codes = [objective.routing_code(s) for s in ("left lung", "right lung")]
    assert torch.equal(codes[0], TrainingObjective(model, tokenizer.ids.image).routing_code("Left  Lung"))
    assert not torch.allclose(codes[0], codes[1])
    batch.teacher_conditioning = True
    losses = objective(batch)
    assert "route" in losses and float(losses["route"]) > 0
    # The decoder reads the codes: its loss sends no gradient into the LLM; the route loss does.
    losses["seg"].backward(retain_graph=True)
    llm_grads = [p.grad for n, p in model.named_parameters() if n.startswith("llm.") and p.grad is not None]
    assert all(float(g.abs().sum()) == 0 for g in llm_grads)
    losses["route"].backward()
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters()
               if n.startswith("llm.") and p.grad is not None)
    batch.teacher_conditioning = False  # joint stage: the published path, the LLM's own states
    model.zero_grad()
    objective(batch)["seg"].backward()
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters()
               if n.startswith("llm.") and p.grad is not None)


def test_learning_rate_multipliers_by_name_prefix() -> None:
    model, _ = build_model("tiny")
    objective = TrainingObjective(model, 0)
    groups = param_groups(objective, {"seg_2d_text": 10.0, "seg_2d": 2.0}, 1e-3)
    rates = {round(g["lr"], 6): len(g["params"]) for g in groups}
    assert set(rates) == {1e-3, 2e-3, 1e-2}
    assert rates[1e-2] == sum(1 for n, _ in model.named_parameters() if n.startswith("seg_2d_text"))
    assert sum(rates.values()) == len([p for p in model.parameters() if p.requires_grad])


def _asked(*targets: str) -> SimpleNamespace:
    """A request as confused() reads it: only its targets matter."""
    return SimpleNamespace(targets=targets)


def test_task_confusion_flags_answers_of_another_task_kind() -> None:
    seg = Task.ABDOMINAL_ORGAN_SEGMENTATION
    liver = Mask2D("liver", np.ones((2, 2), bool))
    kidney = Mask2D("kidney", np.ones((2, 2), bool))
    ask_kidney = [_asked("kidney")]
    assert confused(seg, Modality.CT, ask_kidney, [Answer("r", seg, "...", masks_2d=[liver])])
    assert not confused(seg, Modality.CT, ask_kidney, [Answer("r", seg, "...", masks_2d=[kidney])])
    det = Task.ANATOMY_DETECTION
    ask = [_asked("left lung", "right lung")]
    good = Answer("r", det, "left lung <DET>, right lung <DET>", boxes=[Box("left lung", 0, 0, 1, 1)])
    assert not confused(det, Modality.CXR, ask, [good])
    assert confused(det, Modality.CXR, ask, [Answer("r", det, "left lung <DET>, heart <DET>",
                                                    boxes=[Box("heart", 0, 0, 1, 1)])])
    cls = Task.SKIN_LESION_CLASSIFICATION
    assert not confused(cls, Modality.DERM, [_asked()], [Answer("r", cls, "melanoma")])
    assert confused(cls, Modality.DERM, [_asked()], [Answer("r", cls, "The lungs are clear.")])
    assert confused(cls, Modality.DERM, [_asked()], [Answer("r", cls, "pneumonia")])
    rep = Task.REPORT_FINDINGS
    assert confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "melanocytic nevus")])
    assert confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "Pneumonia.")])  # a classification answer
    assert not confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "The lungs are clear.")])
    assert not confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "Patchy opacities: pneumonia.")])
    assert confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "Fever. A melanoma of the back.")])
    # Clinical notes name organs; a chest note about a kidney transplant recipient is a chest note.
    assert not confused(rep, Modality.CXR, [_asked()], [Answer("r", rep, "A kidney transplant recipient with fever.")])


def test_no_reference_report_of_medinterp_mini_counts_as_confused() -> None:
    """The metric must pass the ground truth: every training and holdout note, given as the answer.

    The one exception is its stated limit: a note that is nothing but class names ("pleural effusion",
    1 of 430 training notes) reads as a classification answer.
    """
    from medversa.training.datasets.medinterp_mini import read_all
    from medversa.training.evaluate import CLASS_PHRASES

    from .conftest import SHARED, need

    mini = need(SHARED / "data" / "medinterp-mini")
    labels = {p.lower() for phrases in CLASS_PHRASES.values() for p in phrases}
    for split in ("train", "holdout"):
        notes = [r for r in read_all(mini, split) if isinstance(r, ReportRecord) and r.images]
        assert notes
        rep = Task.REPORT_FINDINGS
        flagged = [r.findings for r in notes
                   if confused(rep, r.modality, [_asked()], [Answer(r.record_id, rep, r.findings)])]
        assert len(flagged) <= 1 and all(text.strip(" .").lower() in labels for text in flagged), (split, flagged)


def test_constant_baseline_is_the_training_text_with_the_best_bleu() -> None:
    image = [ArrayImage(np.zeros((8, 8), np.uint8))]
    texts = ["the lungs are clear without effusion", "the lungs are clear without effusion today",
             "the lungs are clear without effusion or edema", "patient fell from a ladder yesterday"]
    records = [ReportRecord("t", str(i), Modality.CXR, "train", image, findings=t) for i, t in enumerate(texts)]
    assert constant_baselines(records, [Task.REPORT_FINDINGS])[Task.REPORT_FINDINGS] == texts[0]


def _lung_boxes(i: int) -> DetectionRecord:
    boxes = {"left lung": [(36.0, 10.0, 60.0, 50.0)], "right lung": [(4.0, 10.0, 28.0, 50.0)]}
    return DetectionRecord("t", f"d{i}", Modality.CXR, "train", ArrayImage(np.zeros((64, 64), np.uint8)), 64, 64,
                           boxes, candidates=("left lung", "right lung"), kind="anatomy")


def test_detection_all_targets_asks_for_every_lung_in_most_samples_and_keeps_old_samples_at_zero() -> None:
    record = _lung_boxes(0)

    def asked(share: float) -> Counter:
        return Counter(len(build_sample(record, Task.ANATOMY_DETECTION, np.random.default_rng(seed),
                                        detection_all_targets=share).structures) for seed in range(400))

    assert asked(0.0)[2] / 400 == pytest.approx(0.5, abs=0.08)  # one or both lungs, even odds
    assert asked(0.75)[2] / 400 == pytest.approx(0.875, abs=0.06)  # 0.75 + 0.25 x 0.5
    assert asked(1.0) == Counter({2: 400})
    for seed in range(20):  # share 0 draws nothing extra: recipes written before the option sample the same
        old = build_sample(record, Task.ANATOMY_DETECTION, np.random.default_rng(seed))
        new = build_sample(record, Task.ANATOMY_DETECTION, np.random.default_rng(seed), detection_all_targets=0.0)
        assert (new.question, new.answer, new.boxes) == (old.question, old.answer, old.boxes)
    both = build_sample(record, Task.ANATOMY_DETECTION, np.random.default_rng(1), detection_all_targets=1.0)
    assert both.answer.count("<DET>") == 2 and set(both.structures) == {"left lung", "right lung"}
    with pytest.raises(ValueError, match="detection_all_targets"):
        TrainConfig.from_dict({"steps": 10, "optimizer": {"warmup_steps": 1}, "detection_all_targets": 1.5})


def test_context_dropout_leaves_fields_out_at_its_chance_and_keeps_old_samples_at_zero() -> None:
    """A radiograph without View/Sex/Age in its DICOM must still read as a radiograph: training leaves
    context fields out at ``context_dropout``; at 0 nothing changes (old recipes sample the same)."""
    from medversa.inference import ClinicalContext

    context = ClinicalContext(age=46, sex="male", view="PA")
    image = [ArrayImage(np.zeros((8, 8), np.uint8))]
    report = ReportRecord("t", "r", Modality.CXR, "train", image, findings="Clear lungs.", context=context)
    labels = ClassificationRecord("t", "c", Modality.CXR, "train", image[0], ["pneumonia"], context=context)
    for record, task in ((report, Task.REPORT_FINDINGS), (labels, Task.CHEST_PATHOLOGY_CLASSIFICATION)):
        contexts = [build_sample(record, task, np.random.default_rng(seed), augment=False,
                                 context_dropout=0.5).context for seed in range(400)]
        without_view = sum("View" not in c for c in contexts) / 400
        assert without_view == pytest.approx(0.5, abs=0.08), task
        assert sum(c == "" for c in contexts) / 400 == pytest.approx(0.125, abs=0.05), task
        assert "Age: 46. Sex: male. View: PA." in contexts, task
        for seed in range(20):
            old = build_sample(record, task, np.random.default_rng(seed), augment=False)
            new = build_sample(record, task, np.random.default_rng(seed), augment=False, context_dropout=0.0)
            assert (new.question, new.answer, new.context) == (old.question, old.answer, old.context)
            assert old.context == "Age: 46. Sex: male. View: PA."
    sampler = DomainAwareSampler([report] * 4, 0, 8, context_dropout=1.0)
    assert {s.context for step in range(3) for s in sampler.samples(step)} == {""}
    assert {s.context for s in DomainAwareSampler([report] * 4, 0, 8).samples(0)} == {"Age: 46. Sex: male. View: PA."}
    with pytest.raises(ValueError, match="context_dropout"):
        TrainConfig.from_dict({"steps": 10, "optimizer": {"warmup_steps": 1}, "context_dropout": -0.1})


def test_strata_weights_leave_text_only_reports_out_and_are_checked() -> None:
    image = [ArrayImage(np.zeros((8, 8), np.uint8))]
    records = [ReportRecord("t", f"r{i}", Modality.CXR, "train", image, findings=f"note {i}.") for i in range(3)]
    records += [TextRecord("iu", f"t{i}", Modality.CXR, "train", findings=f"text {i}.") for i in range(30)]
    weighted = DomainAwareSampler(records, 0, 4, balanced=["report_findings"],
                                  strata_weights={"report_findings": {"text only": 0}}, augment=False)
    drawn = [s for step in range(50) for s in weighted.samples(step)]
    assert drawn and all(s.images and s.answer.startswith("note") for s in drawn)
    even = DomainAwareSampler(records, 0, 4, balanced=["report_findings"], augment=False)
    assert 0.3 < sum(bool(s.images) for step in range(50) for s in even.samples(step)) / 200 < 0.7
    with pytest.raises(ValueError, match="no stratum"):
        DomainAwareSampler(records, 0, 4, balanced=["report_findings"], strata_weights={"report_findings": {"x": 1}})
    with pytest.raises(ValueError, match="not in balanced"):
        TrainConfig.from_dict({"steps": 10, "optimizer": {"warmup_steps": 1},
                               "strata_weights": {"report_findings": {"text only": 0}}})


def _ct_batch():
    volume = np.random.default_rng(0).normal(-100.0, 40.0, (16, 48, 48))
    volume[4:12, 30:40, 6:14] += 160.0  # a bright "organ" off-centre
    organ = np.zeros(volume.shape, bool)
    organ[4:12, 30:40, 6:14] = True
    record = SegmentationRecord("t", "ct0", Modality.CT, "train", ArrayImage(volume), {"kidney": ArrayMask(organ)})
    model, tokenizer = build_model("tiny")
    sample = build_sample(record, Task.ABDOMINAL_ORGAN_SEGMENTATION, np.random.default_rng(0), False)
    return collate([sample], tokenizer, model.config, 256)


def test_ct_crops_centre_on_the_organ_keep_image_and_mask_aligned_and_repeat_for_a_seed() -> None:
    batch = _ct_batch()
    full_mask = batch.seg_masks[0]
    assert batch.images[0].shape == (1, 1, 64, 192, 192) and full_mask.sum() > 0
    # Each voxel holds its own index: a crop's first voxel tells where its window lies.
    index = torch.arange(64 * 192 * 192, dtype=torch.float64).reshape(1, 1, 64, 192, 192)
    batch = dataclasses.replace(batch, images=[index])
    crops = [crop_volumes(batch, (16, 32, 32), foreground=1.0, seed=s) for s in range(6)]
    for crop in crops:
        image, mask = crop.images[0], crop.seg_masks[0]
        assert image.shape == (1, 1, 16, 32, 32) and mask.shape == (16, 32, 32)
        assert mask.sum() > 0  # every crop holds organ voxels
        # The crop is a window of the model volume, the same window for image and mask.
        z, x, y = np.unravel_index(int(image[0, 0, 0, 0, 0]), (64, 192, 192))
        assert torch.equal(image[0, 0], index[0, 0, z:z + 16, x:x + 32, y:y + 32])
        assert torch.equal(mask, full_mask[z:z + 16, x:x + 32, y:y + 32])
    assert len({int(c.images[0][0, 0, 0, 0, 0]) for c in crops}) > 1  # different seeds, different windows
    again = crop_volumes(batch, (16, 32, 32), foreground=1.0, seed=3)
    assert torch.equal(again.images[0], crops[3].images[0]) and torch.equal(again.seg_masks[0], crops[3].seg_masks[0])
    assert batch.images[0].shape == (1, 1, 64, 192, 192)  # the input batch is left as it was
    chest = _seg_batch(["left lung"])[1]
    assert crop_volumes(chest, (16, 32, 32), 1.0, 0) is chest  # 2D batches are not cropped


def test_ct_crop_sizes_are_checked() -> None:
    base = {"steps": 10, "optimizer": {"warmup_steps": 1}}
    assert TrainConfig.from_dict({**base, "ct_crop": [32, 96, 96]}).ct_crop == [32, 96, 96]
    for bad in ([32, 96], [30, 96, 96], [0, 96, 96]):
        with pytest.raises(ValueError, match="multiple of 16"):
            TrainConfig.from_dict({**base, "ct_crop": bad})
    with pytest.raises(ValueError, match="ct_crop_foreground"):
        TrainConfig.from_dict({**base, "ct_crop": [32, 96, 96], "ct_crop_foreground": 2})
    with pytest.raises(ValueError, match="larger than the model volume"):
        Trainer(TrainConfig.from_dict({**base, "preset": "tiny", "ct_crop": [80, 96, 96]}), records=[_chest(0)])


def test_a_trainer_with_ct_crop_trains_ct_steps_on_windows(tmp_path) -> None:
    volume = np.random.default_rng(1).normal(-100.0, 40.0, (16, 48, 48))
    organ = np.zeros(volume.shape, bool)
    organ[4:12, 30:40, 6:14] = True
    record = SegmentationRecord("t", "ct0", Modality.CT, "train", ArrayImage(volume), {"kidney": ArrayMask(organ)})
    config = TrainConfig.from_dict({"preset": "tiny", "steps": 2, "optimizer": {"warmup_steps": 1},
                                    "ct_crop": [16, 32, 32], "output_dir": str(tmp_path)})
    trainer = Trainer(config, records=[record])
    seen = []
    original = trainer.objective.forward
    trainer.objective.forward = lambda batch: (seen.append(batch.images[0].shape), original(batch))[1]
    rows = [trainer.train_step() for _ in range(2)]
    assert seen == [(1, 1, 16, 32, 32)] * 2
    assert all(r["task"] == "abdominal_organ_segmentation" and np.isfinite(r["loss_seg"]) for r in rows)


def test_a_step_with_a_non_finite_gradient_is_skipped_not_applied(tmp_path) -> None:
    config = TrainConfig.from_dict({"preset": "tiny", "steps": 3, "optimizer": {"warmup_steps": 1},
                                    "output_dir": str(tmp_path), "augment": False})
    trainer = Trainer(config, records=[_chest(i) for i in range(2)])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    original = trainer.objective.forward

    def poisoned(batch):
        losses = original(batch)
        losses["total"] = losses["total"] * float("inf")
        return losses

    trainer.objective.forward = poisoned
    row = trainer.train_step()
    assert row["skipped"] is True and not np.isfinite(row["grad_norm"])
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # no NaN written, nothing moved
    trainer.objective.forward = original
    row = trainer.train_step()
    assert "skipped" not in row and np.isfinite(row["grad_norm"])
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(bool(torch.isfinite(p).all()) for p in after.values())
