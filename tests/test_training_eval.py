"""Evaluation metrics (hand-computable values), evaluate() on small record sets, and ``medversa eval``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medversa.inference import (
    Answer,
    Box,
    ClinicalContext,
    Declaration,
    Mask2D,
    Modality,
    Task,
    TaskFamily,
    TaskRequest,
)
from medversa.training import eval_metrics
from medversa.training.evaluate import (
    SKIPPED,
    closed_options,
    confused,
    evaluate,
    majority_answers,
    named_classes,
    render_markdown,
    requests_for,
)
from medversa.training.records import (
    ArrayMask,
    ClassificationRecord,
    DetectionRecord,
    ImageFile,
    RegionCaptionRecord,
    ReportRecord,
    SegmentationRecord,
    VQARecord,
)
from medversa.training.text_metrics import load_text_metrics

from .conftest import REPO, SHARED

MEDINTERP_MINI = SHARED / "data" / "medinterp-mini"
STATS = {"mean", "ci_low", "ci_high", "n"}


# --- BLEU-4 ---------------------------------------------------------------------------------------
def test_bleu_of_identical_texts_is_one() -> None:
    text = "The heart size is normal. The lungs are clear."
    assert eval_metrics.corpus_bleu([text, text], [text, text]) == pytest.approx(1.0)


def test_bleu_matches_hand_counted_ngram_precisions() -> None:
    # 6/7 unigrams, 4/6 bigrams, 3/5 trigrams, 2/4 four-grams match; candidate longer: no penalty.
    score = eval_metrics.corpus_bleu(["the cat sat on the red mat"], ["the cat sat on the mat"])
    assert score == pytest.approx((6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)


def test_bleu_penalises_short_candidates() -> None:
    # Every n-gram matches, but 5 tokens against 6: BP = exp(1 - 6/5).
    assert eval_metrics.corpus_bleu(["the cat sat on the"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.2))


def test_bleu_clips_repeated_words_and_ignores_case_and_punctuation() -> None:
    stats = eval_metrics.bleu_stats(eval_metrics.tokenize("The the, THE the."), eval_metrics.tokenize("the cat"))
    assert stats[0] == 1 and stats[1] == 4  # "the" counted at most as often as the reference has it
    assert eval_metrics.corpus_bleu(["No effusion."], ["no effusion"]) == 0.0  # no 3- or 4-grams: BLEU-4 is 0


def test_corpus_bleu_sums_counts_over_documents() -> None:
    perfect = "the heart is normal in size today"  # 7 tokens, all n-grams match
    wrong = "a b c d"  # 4 tokens, nothing matches
    expected = (7 / 11 * 6 / 9 * 5 / 7 * 4 / 5) ** 0.25
    assert eval_metrics.corpus_bleu([perfect, wrong], [perfect, "w x y z"]) == pytest.approx(expected)


# --- boxes, masks, F1 -----------------------------------------------------------------------------
def test_dice_of_known_masks_and_empty_masks() -> None:
    predicted = np.array([[1, 1], [0, 0]], dtype=bool)
    truth = np.array([[1, 0], [0, 0]], dtype=bool)
    assert eval_metrics.dice(predicted, truth) == pytest.approx(2 / 3)
    empty = np.zeros((2, 2), dtype=bool)
    assert eval_metrics.dice(empty, empty) == 1.0  # documented convention
    assert eval_metrics.dice(empty, truth) == 0.0
    with pytest.raises(ValueError, match="shape"):
        eval_metrics.dice(np.zeros((3, 3), bool), truth)


def test_box_iou_of_known_boxes() -> None:
    assert eval_metrics.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert eval_metrics.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert eval_metrics.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_one_predicted_box_is_credited_to_one_ground_truth_box() -> None:
    truth = [(0, 0, 2, 2), (0, 0, 2, 4)]
    assert eval_metrics.match_boxes(truth, [(0, 0, 2, 4)]) == [0.0, 1.0]
    assert eval_metrics.match_boxes(truth, []) == [0.0, 0.0]


def test_f1_of_a_known_confusion_at_threshold_half() -> None:
    # Class 0: TP 2, FP 1, FN 1 -> F1 = 4 / 6. Class 1: perfect. 0.5 counts as positive, 0.49 not.
    y_true = np.array([[1, 1], [1, 0], [1, 0], [0, 1]])
    y_score = np.array([[0.9, 0.5], [0.5, 0.0], [0.49, 0.2], [0.7, 0.8]])
    assert eval_metrics.f1_per_class(y_true, y_score) == pytest.approx([2 / 3, 1.0])
    assert eval_metrics.macro_f1(y_true, y_score) == pytest.approx((2 / 3 + 1) / 2)


def test_f1_of_a_class_never_present_nor_predicted_is_left_out_of_the_mean() -> None:
    y_true = np.array([[1, 0], [0, 0]])
    y_pred = np.array([[1, 0], [0, 0]])
    f1 = eval_metrics.f1_per_class(y_true, y_pred)
    assert f1[0] == 1.0 and np.isnan(f1[1])
    assert eval_metrics.macro_f1(y_true, y_pred) == 1.0


# --- bootstrap ------------------------------------------------------------------------------------
def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(7)
    small = eval_metrics.bootstrap_mean(rng.uniform(0, 1, 20))
    large = eval_metrics.bootstrap_mean(rng.uniform(0, 1, 2000))
    for result in (small, large):
        assert set(result) == STATS
        assert result["ci_low"] <= result["mean"] <= result["ci_high"]
    assert small["n"] == 20 and large["n"] == 2000
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 3


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    values = np.linspace(0, 1, 30)
    assert eval_metrics.bootstrap_mean(values, seed=3) == eval_metrics.bootstrap_mean(values, seed=3)
    assert eval_metrics.bootstrap_mean(values, seed=3) != eval_metrics.bootstrap_mean(values, seed=4)


def test_bootstrap_of_bleu_and_f1_resample_whole_cases() -> None:
    text = "the heart size is normal"
    bleu = eval_metrics.bootstrap_bleu([text] * 5, [text] * 5)
    assert bleu == {"mean": pytest.approx(1.0), "ci_low": pytest.approx(1.0), "ci_high": pytest.approx(1.0), "n": 5}
    y_true = np.array([[1, 0]] * 10 + [[0, 1]] * 10)
    per_class, macro = eval_metrics.bootstrap_f1(y_true, y_true.astype(float))
    assert [c["mean"] for c in per_class] == [1.0, 1.0] and macro["mean"] == 1.0 and macro["n"] == 20


# --- evaluate() -----------------------------------------------------------------------------------
def test_class_phrases_are_matched_as_whole_words_longest_first() -> None:
    phrases = ["pneumothorax", "hydropneumothorax", "lung opacity", "opacity", "melanoma"]
    assert named_classes("Hydropneumothorax and lung opacity.", phrases) == {"hydropneumothorax", "lung opacity"}
    assert named_classes("melanomas; no finding", phrases) == set()


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _records(tmp_path: Path) -> list:
    """Two cases of each evaluated task: chest organs, derm class + lesion, lung boxes, findings, closed VQA
    (a yes/no and a frontal/lateral question, as medinterp-mini builds them), region captions of the lungs."""
    rng = np.random.default_rng(0)
    records: list = []
    for i in range(2):
        gray = _png(tmp_path / f"cxr{i}.png", rng.integers(0, 255, (48, 40), dtype=np.uint8))
        color = _png(tmp_path / f"derm{i}.png", rng.integers(0, 255, (32, 36, 3), dtype=np.uint8))
        left = np.zeros((48, 40), bool)
        left[8:40, 22:36] = True
        right = np.zeros((48, 40), bool)
        right[8:40, 4:18] = True
        lesion = np.zeros((32, 36), bool)
        lesion[8:24, 10:26] = True
        rid = f"case{i}"
        records += [
            SegmentationRecord("fixture/cxr", rid, Modality.CXR, "holdout", ImageFile(gray),
                               {"left lung": ArrayMask(left), "right lung": ArrayMask(right)}),
            ClassificationRecord("fixture/derm", rid, Modality.DERM, "holdout", ImageFile(color),
                                 ["melanoma" if i == 0 else "melanocytic nevus"]),
            SegmentationRecord("fixture/derm", rid, Modality.DERM, "holdout", ImageFile(color),
                               {"skin lesion": ArrayMask(lesion)}),
            DetectionRecord("fixture/cxr", rid, Modality.CXR, "holdout", ImageFile(gray), 40, 48,
                            {"left lung": [(22, 8, 36, 40)], "right lung": [(4, 8, 18, 40)]},
                            candidates=("left lung", "right lung")),
            ReportRecord("fixture/cxr", rid, Modality.CXR, "holdout", [ImageFile(gray)],
                         findings=f"Case {i}: the heart size is normal and the lungs are clear.",
                         context=ClinicalContext(age=60, sex="female")),
            VQARecord("fixture/derm", f"{rid}/melanoma", Modality.DERM, "holdout", [ImageFile(color)],
                      "Is this skin lesion a melanoma?", "yes" if i == 0 else "no"),
            VQARecord("fixture/cxr", f"{rid}/view", Modality.CXR, "holdout", [ImageFile(gray)],
                      "Is this a frontal or a lateral view?", "frontal"),
            RegionCaptionRecord("fixture/cxr", f"{rid}/left lung/0", Modality.CXR, "holdout", ImageFile(gray),
                                40, 48, (22, 8, 36, 40), "left lung"),
            RegionCaptionRecord("fixture/cxr", f"{rid}/right lung/0", Modality.CXR, "holdout", ImageFile(gray),
                                40, 48, (4, 8, 18, 40), "right lung"),
        ]
    return records


class _PerfectAnalyzer:
    """Answers every request with its record's ground truth, as a perfect model would."""

    def __init__(self, records: list) -> None:
        self.by_key = {(r.record_id, type(r).__name__, r.modality): r for r in records}
        self.requests: list[TaskRequest] = []
        self.answers: dict[Task, str] = {}  # a fixed answer per task instead of the truth

    def run(self, requests: list[TaskRequest]) -> list[Answer]:
        self.requests += requests
        answers = []
        for request in requests:
            rid = request.images[0].source_id
            family = request.task.family
            if family is TaskFamily.SEGMENTATION:
                rec = self.by_key[(rid, "SegmentationRecord", request.modality)]
                answers.append(Answer(request.request_id, request.task, "masks",
                                      masks_2d=[Mask2D(t, rec.masks[t].load()) for t in request.targets]))
            elif family is TaskFamily.DETECTION:
                rec = self.by_key[(rid, "DetectionRecord", request.modality)]
                boxes = [Box(t, *b) for t in request.targets for b in rec.boxes.get(t, [])]
                text = ", ".join(f"{b.label} <DET>" for b in boxes)  # as the model answers
                answers.append(Answer(request.request_id, request.task, text, boxes=boxes))
            elif request.task in self.answers:
                answers.append(Answer(request.request_id, request.task, self.answers[request.task]))
            elif request.task is Task.VQA:
                rec = self.by_key[(rid, "VQARecord", request.modality)]
                answers.append(Answer(request.request_id, request.task, rec.answer.capitalize() + "."))
            elif request.task is Task.REGION_CAPTIONING:
                rec = self.by_key[(rid, "RegionCaptionRecord", request.modality)]
                answers.append(Answer(request.request_id, request.task, rec.caption))
            elif family is TaskFamily.CLASSIFICATION:
                rec = self.by_key[(rid, "ClassificationRecord", request.modality)]
                answers.append(Answer(request.request_id, request.task, " and ".join(rec.labels).capitalize() + "."))
            else:
                rec = self.by_key[(rid, "ReportRecord", request.modality)]
                answers.append(Answer(request.request_id, request.task, rec.findings))
        return answers


EXPECTED_KEYS = {
    "chest_organ_segmentation/left_lung/dice", "chest_organ_segmentation/right_lung/dice",
    "chest_organ_segmentation/mean/dice", "skin_lesion_segmentation/skin_lesion/dice",
    "skin_lesion_segmentation/mean/dice", "skin_lesion_classification/melanoma/f1",
    "skin_lesion_classification/melanocytic_nevus/f1", "skin_lesion_classification/mean/f1",
    "anatomy_detection/left_lung/iou", "anatomy_detection/right_lung/iou", "anatomy_detection/mean/iou",
    "report_findings/all/bleu4", "report_findings/all/rougeL",
    "vqa/is_this_skin_lesion_a_melanoma/accuracy", "vqa/is_this_a_frontal_or_a_lateral_view/accuracy",
    "vqa/answer_yes/accuracy", "vqa/answer_no/accuracy", "vqa/answer_frontal/accuracy", "vqa/mean/accuracy",
    "vqa/all/accuracy", "region_captioning/left_lung/accuracy", "region_captioning/right_lung/accuracy",
    "region_captioning/mean/accuracy", "region_captioning/all/accuracy",
    *(f"{task}/all/confusion" for task in ("chest_organ_segmentation", "skin_lesion_segmentation",
                                           "skin_lesion_classification", "anatomy_detection", "report_findings",
                                           "report_impression", "report_full",  # confusion probes: no reference
                                           "vqa", "region_captioning")),
}


def test_a_perfect_model_scores_one_on_every_metric(tmp_path: Path) -> None:
    records = _records(tmp_path)
    analyzer = _PerfectAnalyzer(records)
    results = evaluate(analyzer, records, resamples=50)
    skipped = results.pop(SKIPPED)
    assert skipped == {}
    assert set(results) == EXPECTED_KEYS
    for key, value in results.items():
        best = 0.0 if key.endswith("/confusion") else 1.0  # task confusion: the share of wrong-kind answers
        assert value["mean"] == pytest.approx(best), key
        assert value["ci_low"] == pytest.approx(best) and value["ci_high"] == pytest.approx(best), key
    assert results["chest_organ_segmentation/left_lung/dice"]["n"] == 2
    assert results["skin_lesion_classification/melanoma/f1"]["n"] == 2  # F1 resamples cases
    # The requests carry what a user would send: the record's classes and clinical context.
    seg = next(r for r in analyzer.requests if r.task is Task.CHEST_ORGAN_SEGMENTATION)
    assert seg.targets == ("left lung", "right lung")
    report = next(r for r in analyzer.requests if r.task is Task.REPORT_FINDINGS)
    assert report.context == "Age: 60. Sex: female."
    assert results["vqa/answer_yes/accuracy"]["n"] == 1 and results["vqa/all/accuracy"]["n"] == 4
    assert results["report_impression/all/confusion"]["n"] == 2  # asked of both radiographs with findings only
    assert results["region_captioning/all/accuracy"]["n"] == 4


def test_vqa_and_captions_are_asked_as_training_builds_their_samples(tmp_path: Path) -> None:
    from medversa.inference import TEMPLATES, fill_template
    from medversa.training.evaluate import _Case
    from medversa.training.samples import build_sample

    records = _records(tmp_path)
    vqa = next(r for r in records if isinstance(r, VQARecord))
    request = requests_for(_Case(Task.VQA, vqa))[0]
    sample = build_sample(vqa, Task.VQA, np.random.default_rng(0), augment=False)
    assert request.prompts() == [("", sample.question)] and len(request.images) == len(sample.images)
    region = next(r for r in records if isinstance(r, RegionCaptionRecord))
    request = requests_for(_Case(Task.REGION_CAPTIONING, region))[0]
    trained = {fill_template(t, [0], "[0.55, 0.17, 0.90, 0.83]") for t in TEMPLATES[Task.REGION_CAPTIONING]}
    assert request.prompts()[0][1] == "Describe region [0.55, 0.17, 0.90, 0.83] in <img0>."
    assert request.prompts()[0][1] in trained  # the task's first template, one training also samples
    for seed in range(20):  # training writes the same region text into whichever template it draws
        assert build_sample(region, Task.REGION_CAPTIONING, np.random.default_rng(seed)).question in trained


def test_wrong_vqa_and_caption_answers_score_zero_and_wrong_kinds_count_as_confusion(tmp_path: Path) -> None:
    records = [r for r in _records(tmp_path) if isinstance(r, (VQARecord, RegionCaptionRecord))]
    analyzer = _PerfectAnalyzer(records)
    analyzer.answers = {Task.VQA: "no", Task.REGION_CAPTIONING: "heart"}  # always "no"; a wrong structure
    results = evaluate(analyzer, records, resamples=20)
    assert results["vqa/answer_yes/accuracy"]["mean"] == 0.0 and results["vqa/answer_no/accuracy"]["mean"] == 1.0
    assert results["vqa/answer_frontal/accuracy"]["mean"] == 0.0
    assert results["vqa/all/accuracy"]["mean"] == pytest.approx(1 / 4)
    assert results["vqa/is_this_skin_lesion_a_melanoma/accuracy"]["mean"] == pytest.approx(1 / 2)
    assert results["vqa/mean/accuracy"]["mean"] == pytest.approx((1 / 2 + 0) / 2)
    # "no" to "frontal or lateral?" is another question kind's answer: confused on half the questions.
    assert results["vqa/all/confusion"]["mean"] == pytest.approx(1 / 2)
    assert results["region_captioning/all/accuracy"]["mean"] == 0.0
    assert results["region_captioning/all/confusion"]["mean"] == 0.0  # a structure, just the wrong one
    analyzer.answers = {Task.VQA: "melanoma", Task.REGION_CAPTIONING: "The segmentation mask of left lung is <2DSEG>"}
    results = evaluate(analyzer, records, resamples=20)
    assert results["vqa/all/confusion"]["mean"] == 1.0 and results["vqa/all/accuracy"]["mean"] == 0.0
    assert results["region_captioning/all/confusion"]["mean"] == 1.0


def test_task_confusion_of_answers_names_other_tasks_forms() -> None:
    from types import SimpleNamespace  # confused() reads only a request's question and targets

    polar = [SimpleNamespace(question="Is there pneumonia in this chest radiograph?", targets=())]
    choice = [SimpleNamespace(question="Is this a frontal or a lateral view?", targets=())]
    vqa, cap = Task.VQA, Task.REGION_CAPTIONING
    assert not confused(vqa, Modality.CXR, polar, [Answer("r", vqa, "Yes.")])
    assert confused(vqa, Modality.CXR, polar, [Answer("r", vqa, "pneumonia")])
    assert confused(vqa, Modality.CXR, polar, [Answer("r", vqa, "")])
    assert confused(vqa, Modality.CXR, choice, [Answer("r", vqa, "yes")])
    assert not confused(vqa, Modality.CXR, choice, [Answer("r", vqa, "lateral")])
    assert confused(vqa, Modality.CXR, polar, [Answer("r", vqa, "yes", boxes=[Box("heart", 0, 0, 1, 1)])])
    lungs = ("left lung", "right lung", "heart")
    assert not confused(cap, Modality.CXR, [], [Answer("r", cap, "right lung")], lungs)
    assert confused(cap, Modality.CXR, [], [Answer("r", cap, "melanocytic nevus")], lungs)
    assert confused(cap, Modality.CXR, [], [Answer("r", cap, "Pneumonia.")], lungs)  # a classification answer
    assert confused(cap, Modality.CXR, [], [Answer("r", cap, "no")], lungs)  # a VQA answer
    assert confused(cap, Modality.CXR, [], [Answer("r", cap, "left lung <DET>")], lungs)  # a detection answer
    assert closed_options("Is this skin lesion a benign keratosis?") == ("yes", "no")
    assert closed_options("Is this a frontal or a lateral view?") == ("frontal", "lateral")
    assert closed_options("What is the size of the lesion?") is None


def test_majority_baseline_is_each_questions_most_frequent_training_answer(tmp_path: Path) -> None:
    records = _records(tmp_path)
    train = [VQARecord("t", str(i), Modality.DERM, "train", [], "Is this skin lesion a melanoma?", a)
             for i, a in enumerate(["no", "no", "yes"])]
    train += [RegionCaptionRecord("t", str(i), Modality.CXR, "train", None, 40, 48, (0, 0, 1, 1), c)
              for i, c in enumerate(["right lung", "left lung", "right lung"])]
    majority = majority_answers(train)
    assert majority == {Task.VQA: {"is this skin lesion a melanoma": "no"},
                        Task.REGION_CAPTIONING: {"all": "right lung"}}
    holdout = [r for r in records if isinstance(r, (VQARecord, RegionCaptionRecord))]
    results = evaluate(_PerfectAnalyzer(holdout), holdout, resamples=20, majority=majority)
    # "no" is right for case1's melanoma question; the view question has no training answer: never right.
    assert results["vqa/constant_baseline/accuracy"]["mean"] == pytest.approx(1 / 4)
    assert results["region_captioning/constant_baseline/accuracy"]["mean"] == pytest.approx(1 / 2)


def test_missing_predictions_score_zero_and_limit_takes_the_first_records(tmp_path: Path) -> None:
    records = _records(tmp_path)

    class Silent:
        def run(self, requests: list[TaskRequest]) -> list[Answer]:
            return [Answer(r.request_id, r.task, "") for r in requests]

    predictions: list[dict] = []
    results = evaluate(Silent(), records, limit=1, resamples=20, predictions=predictions)
    assert results["anatomy_detection/left_lung/iou"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 1}
    assert results["chest_organ_segmentation/mean/dice"]["mean"] == 0.0
    assert results["report_findings/all/bleu4"]["mean"] == 0.0
    assert results["skin_lesion_classification/melanoma/f1"]["mean"] == 0.0  # FN only
    assert "skin_lesion_classification/melanocytic_nevus/f1" not in results  # only case0 (melanoma) was scored
    assert results["vqa/all/accuracy"]["mean"] == 0.0 and results["vqa/all/confusion"]["mean"] == 1.0  # no answer
    assert results["region_captioning/all/confusion"]["mean"] == 1.0
    assert results["report_impression/all/confusion"]["n"] == 1  # a probe: no reference, confusion only
    assert "report_impression/all/bleu4" not in results
    assert len(predictions) == 9 and {p["record_id"].split("/")[0] for p in predictions} == {"case0"}
    probe = next(p for p in predictions if p["task"] == "report_impression")
    assert probe["reference"] is None and probe["output"] == ""
    vqa = next(p for p in predictions if p["task"] == "vqa")
    assert vqa["reference"] == "yes" and vqa["question"] == "Is this skin lesion a melanoma?" and not vqa["correct"]
    json.dumps(predictions)  # external scorers read it as JSON lines


def test_evaluate_runs_the_tiny_model_and_reports_skipped_metrics(tmp_path: Path, tiny_analyzer) -> None:
    records = _records(tmp_path)
    _, skipped = load_text_metrics()
    results = evaluate(tiny_analyzer, records, resamples=100, skipped=skipped)
    assert set(results[SKIPPED]) == {"bertscore", "chexbert", "radgraph", "radcliq"}
    metric_keys = [k for k in results if k != SKIPPED]
    assert {"chest_organ_segmentation/mean/dice", "anatomy_detection/mean/iou", "report_findings/all/bleu4",
            "skin_lesion_classification/melanoma/f1"} <= set(metric_keys)
    for key in metric_keys:
        task, _, metric = key.split("/")
        assert Task(task) and metric in {"dice", "iou", "f1", "bleu4", "rougeL", "confusion", "accuracy"}
        value = results[key]
        assert set(value) == STATS and value["n"] >= 1
        assert 0.0 <= value["ci_low"] <= value["ci_high"] <= 1.0
        assert 0.0 <= value["mean"] <= 1.0
    table = render_markdown(results, "tiny")
    assert "| Chest organ segmentation | left lung | Dice |" in table
    assert "- radgraph: no local model given" in table
    assert "- radcliq: needs radgraph, bertscore, chexbert" in table


def test_markdown_table_reads_like_the_papers_tables() -> None:
    results = {"report_findings/all/bleu4": {"mean": 0.178, "ci_low": 0.172, "ci_high": 0.184, "n": 49},
               "skin_lesion_classification/mean/f1": {"mean": None, "ci_low": None, "ci_high": None, "n": 3},
               SKIPPED: {"bertscore": "no local model given"}}
    table = render_markdown(results)
    assert "| Task | Class | Metric | Mean [95% CI] | n |" in table
    assert "| Report findings | all | BLEU-4 | 0.178 [0.172, 0.184] | 49 |" in table
    assert "| Skin lesion classification | mean | F1 | - [-, -] | 3 |" in table
    assert "- bertscore: no local model given" in table


# --- model-based text metrics ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random two-layer BERT with a 20-word vocabulary, saved as a local model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "lungs", "are",
             "clear", "no", "effusion", "size", "large", "left", "right", "pleural", "."]
    # A real model_max_length: bert-score truncates to it (an unbounded one overflows under transformers 5).
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64))
    model.save_pretrained(folder)
    # CheXbert's published layout: a DataParallel bert_labeler with 14 linear heads.
    state = {f"module.bert.{k}": v for k, v in model.state_dict().items()}
    state["module.linear_heads.0.weight"] = torch.zeros(4, 32)
    torch.save({"model_state_dict": state, "epoch": 1}, folder / "chexbert.pth")
    return folder


def test_bertscore_and_chexbert_similarity_from_local_models(tiny_bert: Path) -> None:
    active, skipped = load_text_metrics(bertscore=tiny_bert, chexbert=tiny_bert, device="cpu")
    assert [m.name for m in active] == ["bertscore", "chexbert"]
    assert set(skipped) == {"radgraph", "radcliq"}
    same = "The heart is normal. The lungs are clear."
    for metric in active:
        scores = metric.score([same, "large left pleural effusion"], [same, same])
        assert scores[0] == pytest.approx(1.0, abs=1e-5), metric.name
        assert scores[1] < scores[0], metric.name  # random weights: lower, not by much


MEAN_ROW = np.array([[0.53792312, 0.61757256, 0.76479421, 0.44738335]])
BASELINE_TSV = "LAYER,P,R,F\n0,0.4,0.4,0.42\n1,0.7,0.7,0.73\n2,0.8,0.8,0.84\n"
TEXT_PAIRS = (["The heart is normal. The lungs are clear.", "large left pleural effusion",
               "no effusion . the heart is large", " lungs are clear "],
              ["The heart is normal. The lungs are clear.", "the heart is normal",
               "left pleural effusion", "the lungs are clear and the heart is normal"])


@pytest.mark.parametrize("layer", [1, 2])
def test_bertscore_agrees_with_the_bert_score_package(tiny_bert: Path, tmp_path: Path, layer: int) -> None:
    """Same F1 as bert-score (greedy matching with [CLS]/[SEP] as match candidates, no idf), raw and
    rescaled with a baseline file in bert-score's format."""
    from bert_score import BERTScorer

    from medversa.training.text_metrics import BertScore, read_baseline

    candidates, references = TEXT_PAIRS
    baseline_file = tmp_path / "baseline.tsv"
    baseline_file.write_text(BASELINE_TSV)
    reference = BERTScorer(model_type=str(tiny_bert), num_layers=layer, lang="en")
    ours = BertScore(tiny_bert, layer=layer, device="cpu")
    np.testing.assert_allclose(ours.score(candidates, references),
                               reference.score(candidates, references)[2].numpy(), atol=1e-5)
    rescaled_reference = BERTScorer(model_type=str(tiny_bert), num_layers=layer, lang="en",
                                    rescale_with_baseline=True, baseline_path=str(baseline_file))
    baseline = read_baseline(baseline_file, layer)
    assert baseline == {1: 0.73, 2: 0.84}[layer]
    rescaled = BertScore(tiny_bert, layer=layer, device="cpu", baseline=baseline).score(candidates, references)
    np.testing.assert_allclose(rescaled, rescaled_reference.score(candidates, references)[2].numpy(), atol=1e-5)
    assert rescaled[0] == pytest.approx(1.0) and rescaled[1] < 0  # an unrelated pair falls below the baseline


def test_read_baseline_names_a_missing_layer(tmp_path: Path) -> None:
    from medversa.training.text_metrics import read_baseline

    (tmp_path / "b.tsv").write_text(BASELINE_TSV)
    with pytest.raises(ValueError, match="no baseline for layer 5"):
        read_baseline(tmp_path / "b.tsv", 5)


def _entity(tokens: str, label: str, relations: list | None = None) -> dict:
    return {"tokens": tokens, "label": label, "start_ix": 0, "end_ix": 0, "relations": relations or []}


#: RadGraph's layout: "left pleural effusion" -> effusion located_at pleural, left modifies pleural.
REFERENCE_GRAPH = {"text": "Left pleural effusion.", "entities": {
    "1": _entity("left", "ANAT-DP", [["modify", "2"]]), "2": _entity("pleural", "ANAT-DP"),
    "3": _entity("effusion", "OBS-DP", [["located_at", "2"]])}}
CANDIDATE_GRAPH = {"text": "Pleural effusion.  No pneumothorax.", "entities": {
    "1": _entity("pleural", "ANAT-DP"), "2": _entity("effusion", "OBS-DP", [["located_at", "1"]]),
    "3": _entity("pneumothorax", "OBS-DA")}}


def test_radgraph_f1_is_the_mean_of_entity_and_relation_f1() -> None:
    from medversa.training.radgraph import entity_set, radgraph_f1, relation_set

    assert entity_set(REFERENCE_GRAPH) == {("left", "ANAT-DP"), ("pleural", "ANAT-DP"), ("effusion", "OBS-DP")}
    assert relation_set(REFERENCE_GRAPH) == {(("left", "ANAT-DP"), ("pleural", "ANAT-DP"), "modify"),
                                             (("effusion", "OBS-DP"), ("pleural", "ANAT-DP"), "located_at")}
    # Entities: 2 of 3 predicted match, 2 of 3 true found -> F1 2/3. Relations: 1 of 1 predicted, 1 of 2 -> 2/3.
    assert radgraph_f1(REFERENCE_GRAPH, CANDIDATE_GRAPH) == pytest.approx(2 / 3)
    assert radgraph_f1(REFERENCE_GRAPH, REFERENCE_GRAPH) == 1.0
    # A label differs -> not the same entity; an empty graph scores 0 (as CXR-Report-Metric does).
    relabelled = {"text": "x", "entities": {"1": _entity("effusion", "OBS-DA")}}
    assert radgraph_f1(REFERENCE_GRAPH, relabelled) == 0.0
    assert radgraph_f1({"entities": {}}, {"entities": {}}) == 0.0


def test_radgraph_annotation_file_matches_reports_by_text(tmp_path: Path) -> None:
    from medversa.training.radgraph import AnnotationFile, RadGraphF1

    path = tmp_path / "radgraph.json"
    path.write_text(json.dumps({"0": REFERENCE_GRAPH, "1": CANDIDATE_GRAPH}))
    metric = RadGraphF1(AnnotationFile(path))
    scores = metric.score(["Pleural effusion. No pneumothorax.", "Left pleural  effusion."],
                          ["Left pleural effusion.", "Left pleural effusion."])
    np.testing.assert_allclose(scores, [2 / 3, 1.0])  # white space is folded before matching
    with pytest.raises(ValueError, match="no RadGraph annotation for 1 report"):
        metric.score(["Heart size is normal."], ["Left pleural effusion."])
    (tmp_path / "bad.json").write_text(json.dumps([{"entities": {}}]))
    with pytest.raises(ValueError, match="annotation 0 has no 'text'"):
        AnnotationFile(tmp_path / "bad.json")


def test_radgraph_annotate_tool_reads_eval_predictions(tmp_path: Path) -> None:
    """radgraph_annotate.py takes every distinct generated and reference report of
    ``medversa eval --predictions`` (it runs the radgraph package in its own environment)."""
    from medversa.training.radgraph_annotate import annotate, report_texts

    lines = [json.dumps({"task": "report_findings", "output": "Left pleural effusion.", "reference": "No effusion."}),
             "", json.dumps({"task": "report_impression", "output": "No effusion.", "reference": "Normal."}),
             json.dumps({"task": "chest_pathology_classification", "output": "", "reference": ["effusion"]})]
    assert report_texts(lines) == ["Left pleural effusion.", "No effusion.", "Normal."]
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        report_texts(["{"])
    with pytest.raises(ValueError, match="needs config.json and weights.th"):
        annotate(["x"], tmp_path)
    from medversa.training.radgraph import RadGraphProcess

    with pytest.raises(ValueError, match="needs config.json and weights.th"):
        RadGraphProcess(tmp_path, sys.executable)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.th").write_bytes(b"")
    with pytest.raises(ValueError, match="no Python interpreter"):
        RadGraphProcess(tmp_path, tmp_path / "no-python")
    with pytest.raises(ValueError, match="needs --radgraph-python"):
        load_text_metrics(radgraph=tmp_path)


def test_radcliq_v1_constants_and_bleu2() -> None:
    from medversa.training.radcliq import COEFFICIENTS, MEAN, SCALE, bleu2, radcliq_v1, report_tokens

    assert radcliq_v1(MEAN[None])[0] == pytest.approx(0.0, abs=1e-9)  # average features: 0
    # One standard deviation better on every feature: minus the sum of the weights (about 1).
    assert radcliq_v1((MEAN + SCALE)[None])[0] == pytest.approx(float(COEFFICIENTS.sum()), abs=1e-9)
    assert radcliq_v1(np.ones((1, 4)))[0] < radcliq_v1(np.zeros((1, 4)))[0]  # lower is better
    with pytest.raises(ValueError, match="features"):
        radcliq_v1(np.ones((2, 3)))
    # As CXR-Report-Metric: a full stop gets a space before it only, so "effusion.No" keeps ".no".
    assert report_tokens("Left  pleural effusion.No change.") == ["left", "pleural", "effusion", ".no",
                                                                    "change", "."]
    assert bleu2("No pleural effusion.", "no pleural effusion .") == pytest.approx(1.0)
    assert bleu2("no effusion", "no pleural effusion") == 0.0  # no matching bigram, no smoothing
    # Unigrams 4/4, bigrams 3/3, brevity exp(1 - 5/4).
    assert bleu2("left pleural effusion.", "small left pleural effusion.") == pytest.approx(math.exp(-0.25))


def test_radcliq_runs_from_its_three_local_models(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    from medversa.training.radcliq import FEATURES, bleu2, radcliq_v1

    graphs = tmp_path / "radgraph.json"
    candidates, references = TEXT_PAIRS
    graphs.write_text(json.dumps([{"text": t, "entities": dict(REFERENCE_GRAPH["entities"]) if i % 2 else {}}
                                  for i, t in enumerate(dict.fromkeys(candidates + references))]))
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text(BASELINE_TSV)
    _, skipped = load_text_metrics(bertscore=tiny_bert, chexbert=tiny_bert, radgraph_annotations=graphs,
                                   device="cpu")
    assert "baseline" in skipped["radcliq"]  # BERTScore must be rescaled as RadCliQ's is
    active, skipped = load_text_metrics(bertscore=tiny_bert, bertscore_layer=2, chexbert=tiny_bert,
                                        radgraph_annotations=graphs, bertscore_baseline=baseline, device="cpu")
    assert skipped == {}
    by_name = {m.name: m for m in active}
    assert list(by_name) == ["bertscore", "chexbert", "radgraph", "radcliq"]
    features = np.column_stack([by_name["radgraph"].score(candidates, references),
                                by_name["bertscore"].score(candidates, references),
                                by_name["chexbert"].score(candidates, references),
                                [bleu2(c, r) for c, r in zip(candidates, references, strict=True)]])
    assert FEATURES == ("radgraph", "bertscore", "semb_score", "bleu_score")
    # RadCliQ takes its parts' scores for these reports as they were just computed: no model runs again.
    from medversa.training.text_metrics import BertScore, CheXbertSimilarity

    for cls in (BertScore, CheXbertSimilarity):
        monkeypatch.setattr(cls, "score", lambda *a, **k: pytest.fail("a part ran again"))
    np.testing.assert_allclose(by_name["radcliq"].score(candidates, references), radcliq_v1(features))
    monkeypatch.undo()
    assert by_name["radcliq"].score(candidates[:1], references[:1])[0] < radcliq_v1(MEAN_ROW)[0]


# --- medversa eval --------------------------------------------------------------------------------
def _write_medinterp_mini(root: Path) -> Path:
    """The smallest folder in medinterp-mini's layout: 2 holdout + 1 train id per folder."""
    rng = np.random.default_rng(1)
    ids = ["a1", "a2", "a3"]

    def split(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "split.csv").write_text("id,split\n" + "".join(f"{i},{'train' if i == 'a3' else 'holdout'}\n"
                                                                  for i in ids))

    def mask(shape: tuple[int, int]) -> np.ndarray:
        m = np.zeros(shape, np.uint8)
        m[shape[0] // 4:3 * shape[0] // 4, shape[1] // 4:3 * shape[1] // 4] = 255
        return m

    organs = root / "cxr-organs"
    split(organs)
    for i in ids:
        _png(organs / "images" / f"{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
        for part in ("left_lung", "right_lung", "heart"):
            _png(organs / "masks" / f"{i}_{part}.png", mask((64, 64)))
    notes = root / "cxr-notes"
    split(notes)
    rows, boxes = [], []
    for i in ids:
        _png(notes / "images" / f"{i}.png", rng.integers(0, 255, (60, 64), dtype=np.uint8))
        _png(notes / "masks" / f"{i}_lungs.png", mask((60, 64)))
        rows.append(f'{i},images/{i}.png,PA,F,50,"Fever and cough; bilateral opacities."\n')
        boxes += [f"{i},right_lung,4,5,30,50\n", f"{i},left_lung,34,5,60,50\n"]
    (notes / "metadata.csv").write_text("id,file,view,sex,age,clinical_notes\n" + "".join(rows))
    (notes / "boxes.csv").write_text("id,label,x0,y0,x1,y1\n" + "".join(boxes))
    derm = root / "derm"
    split(derm)
    labels = []
    for i, dx in zip(ids, ["melanoma", "common_nevus", "seborrheic_keratosis"], strict=True):
        _png(derm / "images" / f"{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        _png(derm / "masks" / f"{i}_lesion.png", mask((40, 48)))
        labels.append(f"{i},images/{i}.png,masks/{i}_lesion.png,{dx}\n")
    (derm / "labels.csv").write_text("id,image,mask,diagnosis\n" + "".join(labels))
    return root


def test_eval_command_prints_one_json_object(tmp_path: Path) -> None:
    data = _write_medinterp_mini(tmp_path / "medinterp-mini")
    table = tmp_path / "table.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "medversa.cli", "eval", "--preset", "tiny", "--data", str(data), "--split", "holdout",
         "--json", "--limit", "2", "--max-new-tokens", "8", "--resamples", "100", "--markdown", str(table),
         "--plot", str(tmp_path / "scores.png")],
        check=False, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout holds exactly one JSON object; logs are on stderr
    assert all(k.count("/") == 2 for k in report)  # keys are task/class/metric and nothing else
    assert "skipped metrics" in proc.stderr and "radgraph" in proc.stderr
    assert (tmp_path / "scores.png").stat().st_size > 1000
    keys = set(report)
    assert {"chest_organ_segmentation/left_lung/dice", "chest_organ_segmentation/mean/dice",
            "skin_lesion_segmentation/skin_lesion/dice", "anatomy_detection/left_lung/iou",
            "skin_lesion_classification/mean/f1", "report_findings/all/bleu4", "vqa/all/accuracy",
            "vqa/all/confusion", "region_captioning/all/accuracy",
            "region_captioning/left_lung/accuracy", "region_captioning/all/confusion"} <= keys
    assert all(set(v) == STATS and v["n"] <= 4 for v in report.values())
    assert table.read_text().startswith("## random-tiny on medinterp-mini holdout")


def test_eval_command_on_the_medinterp_mini_holdout(tmp_path: Path) -> None:
    if not MEDINTERP_MINI.is_dir():
        pytest.skip(f"{MEDINTERP_MINI} is not available in this checkout")
    from typer.testing import CliRunner

    from medversa.cli import app

    result = CliRunner().invoke(app, ["eval", "--preset", "tiny", "--data", str(MEDINTERP_MINI), "--split",
                                      "holdout", "--json", "--limit", "2", "--max-new-tokens", "8",
                                      "--resamples", "100", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"chest_organ_segmentation/heart/dice", "anatomy_detection/right_lung/iou",
            "report_findings/all/bleu4"} <= set(report)
    assert all(v["n"] <= 2 for k, v in report.items() if "/mean/" not in k)


def test_no_finding_has_its_own_f1_row_outside_the_macro_mean(tmp_path: Path) -> None:
    gray = _png(tmp_path / "cxr.png", np.zeros((16, 16), np.uint8))
    records = [ClassificationRecord("fixture/cxr", f"c{i}", Modality.CXR, "holdout", ImageFile(gray), labels)
               for i, labels in enumerate([[], ["pneumonia"]])]

    class Answers:
        def __init__(self, texts: dict[str, str]) -> None:
            self.texts = texts

        def run(self, requests: list[TaskRequest]) -> list[Answer]:
            return [Answer(r.request_id, r.task, self.texts[r.images[0].source_id]) for r in requests]

    right = evaluate(Answers({"c0": "No finding.", "c1": "Pneumonia."}), records, resamples=20)
    assert right["chest_pathology_classification/no_finding/f1"]["mean"] == 1.0
    assert right["chest_pathology_classification/mean/f1"]["mean"] == 1.0
    assert right["chest_pathology_classification/all/confusion"]["mean"] == 0.0
    always = evaluate(Answers({"c0": "Pneumonia.", "c1": "Pneumonia."}), records, resamples=20)
    assert always["chest_pathology_classification/no_finding/f1"]["mean"] == 0.0  # the mean hides this
    assert always["chest_pathology_classification/pneumonia/f1"]["mean"] == pytest.approx(2 / 3)
    assert always["chest_pathology_classification/mean/f1"]["mean"] == pytest.approx(2 / 3)


# --- tools/demo_report.py -------------------------------------------------------------------------
def _demo_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_report", REPO / "tools" / "demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_report_takes_a_run_or_its_checkpoint_and_lists_every_row(tmp_path: Path) -> None:
    report = _demo_report()
    run = tmp_path / "demo-tune"
    (run / "checkpoint").mkdir(parents=True)
    (run / "train-config.yaml").write_text("name: demo-tune\n")
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="medversa-checkpoint.json"):
        report.resolve_run(run)  # no checkpoint written yet
    (run / "checkpoint" / "medversa-checkpoint.json").write_text("{}")
    assert report.resolve_run(run) == report.resolve_run(run / "checkpoint") == (run, run / "checkpoint")
    value = {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}
    scores = {"vqa/answer_yes/accuracy": value, "vqa/mean/accuracy": value, "vqa/all/accuracy": value,
              "vqa/constant_baseline/accuracy": value, "vqa/all/confusion": value,
              "skin_lesion_classification/benign_keratosis/f1": value,
              "abdominal_organ_segmentation/pancreas_training_ct/dice": value}
    headline = report._headline(scores, "vqa")
    assert headline.startswith("macro accuracy 0.500 [0.250, 0.750]; accuracy 0.500")
    assert "constant baseline accuracy" in headline and "task confusion" in headline
    assert "answer yes" not in headline  # per-class rows are in the table, not the headline
    probed = report._headline({"report_full/all/confusion": value}, "report_full")
    assert probed.startswith("task confusion 0.500") and "no reference text" in probed
    rows = "\n".join(report.readme_table(scores))
    for row in ("| vqa | answer yes | accuracy | 0.500 [0.250, 0.750] | 4 |",
                "| skin lesion classification | benign keratosis | F1 |",
                "| abdominal organ segmentation | pancreas training ct | Dice |"):
        assert row in rows


def test_report_sections_without_a_reference_are_probed_for_confusion_only(tmp_path: Path) -> None:
    reports = [r for r in _records(tmp_path) if isinstance(r, ReportRecord)]

    class Sections:
        def run(self, requests: list[TaskRequest]) -> list[Answer]:
            text = {Task.REPORT_FINDINGS: "The lungs are clear.", Task.REPORT_IMPRESSION: "Melanoma.",
                    Task.REPORT_FULL: "Findings: the lungs are clear. Impression: no acute disease."}
            return [Answer(r.request_id, r.task, text[r.task]) for r in requests]

    results = evaluate(Sections(), reports, resamples=20)
    assert results["report_findings/all/confusion"]["mean"] == 0.0
    assert results["report_impression/all/confusion"]["mean"] == 1.0  # a lesion class as a chest impression
    assert results["report_full/all/confusion"]["mean"] == 0.0
    assert not any(k.startswith(("report_impression/", "report_full/")) and not k.endswith("/confusion")
                   for k in results if k != SKIPPED)
    plain = evaluate(Sections(), reports, resamples=20, confusion_probes=False)
    assert "report_impression/all/confusion" not in plain


def test_confusion_probes_ask_only_the_sections_the_checkpoint_declares(tmp_path: Path) -> None:
    reports = [r for r in _records(tmp_path) if isinstance(r, ReportRecord)]

    class FindingsOnly:
        declaration = Declaration(tasks=(Task.REPORT_FINDINGS,))

        def run(self, requests: list[TaskRequest]) -> list[Answer]:
            assert {r.task for r in requests} == {Task.REPORT_FINDINGS}  # the node sends no other section
            return [Answer(r.request_id, r.task, "The lungs are clear.") for r in requests]

    results = evaluate(FindingsOnly(), reports, resamples=20)
    assert results["report_findings/all/confusion"]["mean"] == 0.0
    assert not any(k.startswith(("report_impression/", "report_full/")) for k in results)


def test_demo_report_follows_a_chain_of_continued_runs(tmp_path: Path) -> None:
    report = _demo_report()
    runs = [tmp_path / "runs" / name for name in ("demo", "demo-tune", "demo-polish")]
    for i, run in enumerate(runs):
        run.mkdir(parents=True)
        parent = f"init_checkpoint: {runs[i - 1] / 'checkpoint'}\n" if i else ""
        (run / "train-config.yaml").write_text(f"name: {run.name}\n{parent}")
        (run / "metrics.jsonl").write_text(json.dumps({"task": "chest_organ_segmentation", "seconds": 1.0}) + "\n")
    assert report.runs_of(runs[2]) == runs
    assert report.ancestor_recipe_names(3) == ["recipe-parent-2.yaml", "recipe-parent.yaml", "recipe.yaml"]
    assert report.ancestor_recipe_names(1) == ["recipe.yaml"]
    from medversa.training.train_config import TrainConfig

    assert report.parent_organ_steps(TrainConfig.from_file(runs[2] / "train-config.yaml")) == 2  # both ancestors
    (runs[0] / "train-config.yaml").write_text(f"name: demo\ninit_checkpoint: {runs[2] / 'checkpoint'}\n")
    with pytest.raises(ValueError, match="loops"):
        report.runs_of(runs[2])


def test_demo_report_counts_the_minutes_of_every_step_of_the_chain(tmp_path: Path) -> None:
    report = _demo_report()
    first, second = tmp_path / "a", tmp_path / "b"
    for run, parent, seconds in ((first, None, [30.0, 90.0]), (second, first, [60.0])):
        run.mkdir()
        (run / "train-config.yaml").write_text(f"name: {run.name}\n"
                                               + (f"init_checkpoint: {parent / 'checkpoint'}\n" if parent else ""))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"task": "vqa", "seconds": s}) + "\n" for s in seconds))
    assert report.step_minutes(second) == pytest.approx(3.0)  # resumed runs too: the steps, not a process's clock
