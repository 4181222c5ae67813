"""Score an :class:`~medversa.inference.analyzer.Analyzer` on held-out records with the paper's metrics.

Each record becomes the request a user would send (the task's first template,
the record's classes as targets, its clinical context), the analyzer answers
them in batches, and the answers are scored as the paper does (Methods,
"Evaluation metrics" and "Confidence intervals"; Tables 1-3, Figs. 3-4):

- segmentation: Dice per structure, mask of the answer labelled with the
  structure's name (none drawn: an empty mask);
- classification: F1 per class at threshold 0.5 and the macro mean; the
  predicted classes are the class phrases the answer text names (whole words,
  case-insensitive, longest phrase first; negations are not parsed, the model
  is trained to name only present classes);
- detection: IoU of each ground-truth box with the predicted box of its class
  (matched one-to-one; no prediction: IoU 0), per class and the macro mean;
- report generation: corpus BLEU-4 of the generated section against the
  reference, plus model-based text metrics when their local models are given
  (:mod:`.text_metrics`);
- VQA (closed questions, asked exactly as training asks them: the record's
  question): accuracy, the answer matching the reference after case, spacing and
  end punctuation are normalised; per question, per reference answer (a model
  that always says "no" shows 0 on "answer yes"), their micro ("all") and macro
  ("mean") means;
- region captioning (the box in the task's first template, as the node asks):
  exact-match accuracy of the caption (here the structure the box outlines), per
  reference caption, micro and macro;
- every task: task confusion (:func:`confused`), the share of answers that are
  another task's kind.

With ``majority`` (:func:`majority_answers`, from the training split) VQA and
captions also get a constant baseline: each question's most frequent training
answer (captions: the most frequent training caption), scored the same way.

Every value comes with a 95% bootstrap interval over cases (1,000 resamples).
The result maps ``task/class/metric`` to ``{"mean", "ci_low", "ci_high", "n"}``
and always has one more key, ``"skipped"``: ``{metric: reason}`` for every
metric that was not computed, so a report never silently lacks a column.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medversa.inference import (
    MAX_DETECTION_TARGETS,
    Answer,
    ContextFields,
    ImageInput,
    Modality,
    Task,
    TaskFamily,
    TaskRequest,
    render_context,
)

from . import eval_metrics
from .records import (
    ClassificationRecord,
    DetectionRecord,
    ImageSource,
    Record,
    RegionCaptionRecord,
    ReportRecord,
    SegmentationRecord,
    VolumeFile,
    VQARecord,
)
from .report_metric import TextMetric
from .samples import tasks_for
from .vocabulary import CHEST_PATHOLOGIES, SKIN_LESION_CLASSES

LOGGER = logging.getLogger(__name__)

#: The reserved result key listing metrics not computed, ``{metric: reason}``.
SKIPPED = "skipped"

CLASSIFICATION_TASK = {
    Modality.DERM: Task.SKIN_LESION_CLASSIFICATION,
    Modality.CXR: Task.CHEST_PATHOLOGY_CLASSIFICATION,
}
#: Class phrases the model answers with (the coded tables the node writes to SR).
CLASS_PHRASES: dict[Task, tuple[str, ...]] = {
    Task.SKIN_LESION_CLASSIFICATION: tuple(SKIN_LESION_CLASSES),
    Task.CHEST_PATHOLOGY_CLASSIFICATION: tuple(CHEST_PATHOLOGIES),
}
NO_FINDING = "no finding"
REPORT_TASKS = (Task.REPORT_FINDINGS, Task.REPORT_IMPRESSION, Task.REPORT_FULL)
_SECTION_HEADER = re.compile(r"\b(?:findings|impression)\s*:", re.IGNORECASE)

#: How each metric is named in keys and in the Markdown table.
METRIC_NAMES = {"dice": "Dice", "iou": "IoU", "f1": "F1", "bleu4": "BLEU-4", "rougeL": "ROUGE-L",
                "accuracy": "accuracy",
                "confusion": "task confusion", "bertscore": "BERTScore",
                "chexbert": "CheXbert", "radgraph": "RadGraph", "radcliq": "RadCliQ-v1 (lower is better)"}


@dataclass
class _Case:
    """One record asked one task; ``outcome`` and ``confused`` are filled from the answers."""

    task: Task
    record: Record
    outcome: Any = None
    confused: bool = False
    #: False for a confusion probe: a task the record has no reference for, asked only for its answer's kind.
    scored: bool = True


#: Record kinds with a scoring rule here (comparisons have no training text in medinterp-mini yet).
EVALUATED = (SegmentationRecord, ClassificationRecord, DetectionRecord, ReportRecord, VQARecord,
             RegionCaptionRecord)
#: Tasks whose answer is one short text scored by exact match.
ANSWER_TASKS = (Task.VQA, Task.REGION_CAPTIONING)


def tasks_of(record: Record) -> list[Task]:
    """The evaluation tasks a holdout record is scored on (empty for record kinds not evaluated yet)."""
    if isinstance(record, ClassificationRecord) and record.modality not in CLASSIFICATION_TASK:
        return []
    return tasks_for(record) if isinstance(record, EVALUATED) else []


def probe_tasks(record: Record) -> list[Task]:
    """Tasks asked of a record only to measure task confusion (no reference to score the answer).

    A radiograph with clinical notes has findings only; the impression and full report are still
    requests the node sends for it, so their answers' kind is checked on the same images.
    """
    if isinstance(record, ReportRecord) and record.images:
        return [t for t in REPORT_TASKS if t not in tasks_for(record)]
    return []


def _image_input(source: ImageSource | None, record: Record) -> ImageInput:
    if source is None:
        raise ValueError(f"record {record.source}/{record.record_id} has no image")
    return ImageInput(source.load(), volume=isinstance(source, VolumeFile), source_id=record.record_id)


def _detection_targets(record: DetectionRecord) -> list[str]:
    return list(dict.fromkeys([*record.candidates, *record.boxes]))


def requests_for(case: _Case, context_fields: ContextFields | None = None) -> list[TaskRequest]:
    """The request(s) a user would send for this record and task (images loaded now).

    Clinical context is written with ``context_fields`` (the checkpoint's declared ones).
    """
    record, task = case.record, case.task
    rid = f"{record.source}/{record.record_id}/{task.value}"
    if isinstance(record, SegmentationRecord):
        return [TaskRequest(task, record.modality, [_image_input(record.image, record)],
                            targets=tuple(record.masks), request_id=rid)]
    if isinstance(record, ClassificationRecord):
        return [TaskRequest(task, record.modality, [_image_input(record.image, record)],
                            context=render_context(record.context, record.modality, context_fields),
                            request_id=rid)]
    if isinstance(record, DetectionRecord):
        image = _image_input(record.image, record)
        targets = _detection_targets(record)
        return [TaskRequest(task, record.modality, [image], targets=tuple(targets[i:i + MAX_DETECTION_TARGETS]),
                            request_id=f"{rid}/{i}") for i in range(0, len(targets), MAX_DETECTION_TARGETS)]
    if isinstance(record, (ReportRecord, VQARecord)):
        if not record.images:
            raise ValueError(f"{type(record).__name__} {record.source}/{record.record_id} has no image")
        images = [ImageInput(src.load(), volume=isinstance(src, VolumeFile), source_id=record.record_id)
                  for src in record.images]
        if isinstance(record, VQARecord):  # the question as training asks it (samples.build_sample)
            return [TaskRequest(task, record.modality, images, question=record.question, request_id=rid)]
        return [TaskRequest(task, record.modality, images,
                            context=render_context(record.context, record.modality, context_fields), request_id=rid)]
    if isinstance(record, RegionCaptionRecord):  # the box in pixels; the request writes it as training does
        return [TaskRequest(task, record.modality, [_image_input(record.image, record)], region=record.region,
                            request_id=rid)]
    raise TypeError(f"cannot evaluate a {type(record).__name__}")


# --- per-case outcomes ----------------------------------------------------------------------------
def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _segmentation_outcome(record: SegmentationRecord, answers: list[Answer]) -> dict[str, float]:
    """Dice of every structure: the union of the answer's masks labelled with it vs the ground truth."""
    volume = isinstance(record.image, VolumeFile)
    drawn = [m for a in answers for m in (a.masks_3d if volume else a.masks_2d)]
    out = {}
    for name, source in record.masks.items():
        truth = source.load()
        predicted = np.zeros(truth.shape, dtype=bool)
        for m in drawn:
            if _same(m.label, name):
                if m.mask.shape != truth.shape:
                    raise ValueError(f"record {record.source}/{record.record_id}: predicted mask of {name!r} is "
                                     f"{m.mask.shape}, ground truth {truth.shape}")
                predicted |= m.mask
        out[name] = eval_metrics.dice(predicted, truth)
    return out


def named_classes(text: str, phrases: Iterable[str]) -> set[str]:
    """Class phrases named in ``text``: whole words, case-insensitive, longest first, no overlaps."""
    remaining = text.lower()
    found = set()
    for phrase in sorted(set(phrases), key=len, reverse=True):
        pattern = re.compile(r"(?<![a-z0-9])" + re.escape(phrase.lower()) + r"(?![a-z0-9])")
        if pattern.search(remaining):
            found.add(phrase)
            remaining = pattern.sub(" ", remaining)
    return found


def _detection_outcome(record: DetectionRecord, answers: list[Answer]) -> dict[str, list[float]]:
    predicted: dict[str, list[eval_metrics.PixelBox]] = defaultdict(list)
    for answer in answers:
        for b in answer.boxes:
            predicted[" ".join(b.label.lower().split())].append((b.x0, b.y0, b.x1, b.y1))
    return {name: eval_metrics.match_boxes(boxes, predicted.get(" ".join(name.lower().split()), []))
            for name, boxes in record.boxes.items() if boxes}


def _report_reference(record: ReportRecord, task: Task) -> str:
    if task is Task.REPORT_FINDINGS:
        return record.findings
    if task is Task.REPORT_IMPRESSION:
        return record.impression
    return f"{record.findings} {record.impression}"


def normal_answer(text: str) -> str:
    """An answer as exact match compares it: lower case, single spaces, no punctuation at either end."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'")


def _reference_answer(record: Record) -> str:
    return record.answer if isinstance(record, VQARecord) else record.caption  # type: ignore[attr-defined]


def question_kind(record: Record) -> str:
    """The row a VQA case is listed under: its question, normalised (no ``/``: keys are task/class/metric)."""
    if isinstance(record, VQARecord):
        return normal_answer(record.question).replace("/", " ")
    return "all"


def _outcome(case: _Case, answers: list[Answer]) -> Any:
    record = case.record
    if isinstance(record, (VQARecord, RegionCaptionRecord)):
        return " ".join(a.plain_text for a in answers)
    if isinstance(record, SegmentationRecord):
        return _segmentation_outcome(record, answers)
    if isinstance(record, ClassificationRecord):
        return " ".join(a.plain_text for a in answers)
    if isinstance(record, DetectionRecord):
        return _detection_outcome(record, answers)
    if isinstance(record, ReportRecord):
        text = " ".join(a.plain_text for a in answers)
        return _SECTION_HEADER.sub(" ", text) if case.task is Task.REPORT_FULL else text
    raise TypeError(f"cannot score a {type(record).__name__}")


def _prediction(case: _Case) -> dict[str, Any]:
    entry = {"task": case.task.value, "source": case.record.source, "record_id": case.record.record_id,
             "output": case.outcome}
    if isinstance(case.record, ReportRecord):
        entry["reference"] = _report_reference(case.record, case.task) if case.scored else None
        entry["confused"] = case.confused
    elif isinstance(case.record, ClassificationRecord):
        entry["reference"] = list(case.record.labels)
    elif isinstance(case.record, (VQARecord, RegionCaptionRecord)):
        entry["reference"] = _reference_answer(case.record)
        entry["correct"] = normal_answer(case.outcome) == normal_answer(entry["reference"])
        if isinstance(case.record, VQARecord):
            entry["question"] = case.record.question
    return entry


# --- task confusion -------------------------------------------------------------------------------
#: Class phrases that belong to each modality's tasks; a report naming another modality's is confused.
DOMAIN_PHRASES: dict[Modality, tuple[str, ...]] = {
    Modality.DERM: tuple(SKIN_LESION_CLASSES) + ("skin lesion",),
    Modality.CT: ("liver", "kidney", "spleen", "pancreas"),
}
#: What a report of another modality never names: that modality's diagnoses and its subject (a skin
#: lesion class in a chest report). Organ names are not among them: clinical notes name organs ("kidney
#: transplant recipient", "liver function"; 8 of medinterp-mini's 430 training notes do).
REPORT_FOREIGN_PHRASES: dict[Modality, tuple[str, ...]] = {Modality.DERM: DOMAIN_PHRASES[Modality.DERM]}
_TASK_ANSWER_FORM = re.compile(r"segmentation mask of|<DET>|<2DSEG>|<3DSEG>|<N/A>", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,.;:]+|\band\b|\(absent\)", re.IGNORECASE)
YES_NO = ("yes", "no")
_CHOICE = re.compile(r"([a-z0-9-]+)\s+or\s+(?:an?\s+|the\s+)?([a-z0-9-]+)")
_POLAR = re.compile(r"^(?:is|are|was|were|does|do|did|can|could|has|have|had|will|would|should)\b")


def closed_options(question: str) -> tuple[str, ...] | None:
    """The answers a closed question allows: "A or B?" -> (A, B); "Is/Does/Are ...?" -> yes/no; open: None."""
    text = normal_answer(question)
    choice = _CHOICE.search(text)
    if choice:
        return choice.groups()
    return YES_NO if _POLAR.match(text) else None


def _leftover(text: str, phrases: Iterable[str]) -> str:
    """What remains of ``text`` once the given phrases, separators and "and" are taken out."""
    remaining = text.lower()
    for phrase in sorted(set(phrases), key=len, reverse=True):
        remaining = re.sub(r"(?<![a-z0-9])" + re.escape(phrase.lower()) + r"(?![a-z0-9])", " ", remaining)
    return _SEPARATORS.sub("", remaining)


def _answer_confused(task: Task, modality: Modality, requests: list[TaskRequest], answers: list[Answer],
                     captions: Iterable[str]) -> bool:
    """VQA and region captioning: a closed question answered outside its options; a caption that is
    another task's answer (class names only, unless a reference caption is that name; yes/no; a foreign
    modality's phrase); any drawing, task token or empty answer."""
    text = " ".join(a.text for a in answers)
    answer = normal_answer(" ".join(a.plain_text for a in answers))
    if not answer or any(a.boxes or a.masks_2d or a.masks_3d for a in answers) or _TASK_ANSWER_FORM.search(text):
        return True
    if task is Task.VQA:
        options = closed_options(" ".join(r.question or "" for r in requests))
        return options is not None and answer not in options
    own = {normal_answer(c) for c in captions}
    if answer in own:
        return False
    foreign = [p for m, phrases in DOMAIN_PHRASES.items() if m is not modality for p in phrases]
    labels = [p for phrases in CLASS_PHRASES.values() for p in phrases] + ["no finding"]
    label_only = bool(named_classes(answer, labels)) and not _leftover(answer, labels)
    return answer in YES_NO or label_only or bool(named_classes(answer, foreign))


def confused(task: Task, modality: Modality, requests: list[TaskRequest], answers: list[Answer],
             captions: Iterable[str] = ()) -> bool:
    """True when the answers are another task's kind rather than ``task``'s (the task-confusion metric).

    - segmentation: a mask of a structure not asked for, or no mask of the one asked for;
    - detection: a box or a phrase of a class the request did not ask for;
    - classification: text that is not the task's class names (or "no finding"), or no class at all;
    - reports: another task's answer form (task tokens, "segmentation mask of", nothing but class
      names: a classification answer) or another modality's diagnosis or subject
      (:data:`REPORT_FOREIGN_PHRASES`: a skin lesion diagnosis in a chest report);
    - VQA: a closed question (:func:`closed_options`) answered with anything but one of its options,
      or any drawing, task token or empty answer;
    - region captioning: a drawing, task token, empty answer, yes/no, a foreign modality's phrase, or
      nothing but classification class names, unless it is one of ``captions`` (the reference
      captions of the evaluated cases: a wrong structure is an error, not confusion).
    """
    if task in ANSWER_TASKS:
        return _answer_confused(task, modality, requests, answers, captions)
    asked = {" ".join(t.lower().split()) for r in requests for t in r.targets}
    if task.family is TaskFamily.SEGMENTATION:
        drawn = {" ".join(m.label.lower().split()) for a in answers for m in (*a.masks_2d, *a.masks_3d)}
        return bool(drawn - asked) or not asked <= drawn
    if task.family is TaskFamily.DETECTION:
        named = {" ".join(b.label.lower().split()) for a in answers for b in a.boxes}
        named |= {" ".join(n.lower().split()) for a in answers for n in a.absent}
        text = " ".join(a.plain_text for a in answers)
        return bool(named - asked) or bool(_leftover(text, asked))
    if task.family is TaskFamily.CLASSIFICATION:
        own = (*CLASS_PHRASES.get(task, ()), "no finding")
        text = " ".join(a.plain_text for a in answers)
        return not named_classes(text, own) or bool(_leftover(text, own))
    text = " ".join(a.text for a in answers)
    foreign = [p for m, phrases in REPORT_FOREIGN_PHRASES.items() if m is not modality for p in phrases]
    drew = any(a.boxes or a.masks_2d or a.masks_3d for a in answers)
    labels = [p for phrases in CLASS_PHRASES.values() for p in phrases] + ["no finding"]
    label_only = bool(named_classes(text, labels)) and not _leftover(text, labels)  # a classification answer
    return drew or label_only or bool(_TASK_ANSWER_FORM.search(text)) or bool(named_classes(text, foreign))


# --- aggregation ----------------------------------------------------------------------------------
def _key(task: Task, name: str, metric: str) -> str:
    return f"{task.value}/{'_'.join(name.lower().split())}/{metric}"


def _per_class(task: Task, cases: list[_Case], metric: str, bootstrap: dict[str, Any]) -> dict[str, dict]:
    """Dice or IoU: per-class means over their values and the macro mean over classes."""
    names = sorted({name for c in cases for name in c.outcome})
    sums = np.zeros((len(cases), len(names)))
    counts = np.zeros((len(cases), len(names)))
    for i, case in enumerate(cases):
        for j, name in enumerate(names):
            values = case.outcome.get(name)
            if values is None:
                continue
            values = values if isinstance(values, list) else [values]
            sums[i, j], counts[i, j] = sum(values), len(values)
    if not names:
        return {}
    per_class, macro = eval_metrics.bootstrap_class_means(sums, counts, **bootstrap)
    out = {_key(task, name, metric): result for name, result in zip(names, per_class, strict=False)}
    out[_key(task, "mean", metric)] = macro
    return out


def _classification(task: Task, cases: list[_Case], bootstrap: dict[str, Any]) -> dict[str, dict]:
    """F1 of every class some case has or some answer names, and their macro mean (paper Fig. 4).

    "no finding" (a case without labels; an answer naming it) gets its own F1 row when a case or an
    answer has it; it is not a pathology, so the macro mean leaves it out.
    """
    labels = {label for c in cases for label in c.record.labels}
    vocabulary = tuple(dict.fromkeys([*CLASS_PHRASES.get(task, ()), *sorted(labels)]))
    predicted = [named_classes(c.outcome, vocabulary) for c in cases]
    classes = [p for p in vocabulary if p in labels or any(p in found for found in predicted)]
    if not classes:
        return {}
    y_true = np.array([[p in c.record.labels for p in classes] for c in cases], dtype=float)
    y_pred = np.array([[p in found for p in classes] for found in predicted], dtype=float)
    per_class, macro = eval_metrics.bootstrap_f1(y_true, y_pred, **bootstrap)
    out = {_key(task, name, "f1"): result for name, result in zip(classes, per_class, strict=True)}
    out[_key(task, "mean", "f1")] = macro
    none_true = np.array([[not c.record.labels] for c in cases], dtype=float)
    none_said = np.array([[NO_FINDING in named_classes(c.outcome, (*vocabulary, NO_FINDING))] for c in cases],
                         dtype=float)
    if none_true.any() or none_said.any():  # listed beside the classes, outside their macro mean (paper Fig. 4)
        out[_key(task, NO_FINDING, "f1")] = eval_metrics.bootstrap_f1(none_true, none_said, **bootstrap)[0][0]
    return out


def _grouped_accuracy(task: Task, groups: list[str], correct: np.ndarray, bootstrap: dict[str, Any],
                      prefix: str = "", macro: bool = False) -> dict[str, dict]:
    """Accuracy per group (cases resampled whole) and, with ``macro``, the unweighted mean over groups."""
    names = sorted(set(groups))
    sums = np.array([[float(c) if g == name else 0.0 for name in names] for g, c in zip(groups, correct, strict=False)])
    counts = np.array([[1.0 if g == name else 0.0 for name in names] for g in groups])
    per_group, mean = eval_metrics.bootstrap_class_means(sums, counts, **bootstrap)
    out = {_key(task, f"{prefix}{name}", "accuracy"): result for name, result in zip(names, per_group, strict=False)}
    if macro:
        out[_key(task, "mean", "accuracy")] = mean
    return out


def _answers(task: Task, cases: list[_Case], bootstrap: dict[str, Any],
             majority: dict[str, str] | None = None) -> dict[str, dict]:
    """VQA / region captions: exact-match accuracy per question (VQA) or reference caption, per reference
    answer (VQA), micro ("all") and macro ("mean"), and the training-majority baseline when given."""
    references = [normal_answer(_reference_answer(c.record)) for c in cases]
    correct = np.array([normal_answer(c.outcome) == ref for c, ref in zip(cases, references, strict=True)],
                       dtype=float)
    out: dict[str, dict] = {}
    if task is Task.VQA:
        kinds = [question_kind(c.record) for c in cases]
        out.update(_grouped_accuracy(task, kinds, correct, bootstrap, macro=True))
        out.update(_grouped_accuracy(task, references, correct, bootstrap, prefix="answer "))
    else:
        out.update(_grouped_accuracy(task, references, correct, bootstrap, macro=True))
    out[_key(task, "all", "accuracy")] = eval_metrics.bootstrap_mean(correct, **bootstrap)
    if majority:
        constant = [normal_answer(majority.get(question_kind(c.record), "")) for c in cases]
        hits = np.array([bool(a) and a == ref for a, ref in zip(constant, references, strict=False)], dtype=float)
        out[_key(task, "constant_baseline", "accuracy")] = eval_metrics.bootstrap_mean(hits, **bootstrap)
    return out


def _reports(task: Task, cases: list[_Case], text_metrics: Sequence[TextMetric],
             bootstrap: dict[str, Any], baseline: str | None = None) -> dict[str, dict]:
    hypotheses = [c.outcome for c in cases]
    references = [_report_reference(c.record, task) for c in cases]
    out = {_key(task, "all", "bleu4"): eval_metrics.bootstrap_bleu(hypotheses, references, **bootstrap),
           _key(task, "all", "rougeL"): eval_metrics.bootstrap_mean(eval_metrics.rouge_l(hypotheses, references),
                                                                     **bootstrap)}
    if baseline is not None:
        constant = [baseline] * len(references)
        out[_key(task, "constant_baseline", "bleu4")] = eval_metrics.bootstrap_bleu(constant, references, **bootstrap)
        out[_key(task, "constant_baseline", "rougeL")] = eval_metrics.bootstrap_mean(
            eval_metrics.rouge_l(constant, references), **bootstrap)
    for metric in text_metrics:
        scores = metric.score(hypotheses, references)
        out[_key(task, "all", metric.name)] = eval_metrics.bootstrap_mean(scores, **bootstrap)
    return out


# --- entry points ---------------------------------------------------------------------------------
def evaluate(analyzer: Any, records: Sequence[Record], *, limit: int | None = None, batch_size: int = 16,
             resamples: int = eval_metrics.RESAMPLES, seed: int = 0, text_metrics: Sequence[TextMetric] = (),
             skipped: dict[str, str] | None = None,
             predictions: list[dict[str, Any]] | None = None,
             baselines: dict[Task, str] | None = None,
             majority: dict[Task, dict[str, str]] | None = None,
             confusion_probes: bool = True) -> dict[str, dict]:
    """Run ``analyzer`` on ``records`` and score the answers.

    Parameters
    ----------
    analyzer
        Anything with ``run(list[TaskRequest]) -> list[Answer]`` (an Analyzer).
    records
        Held-out records (never the training split: nothing here tunes on them).
    limit
        Score only the first ``limit`` records of each task (quick runs).
    batch_size
        Requests handed to the analyzer at once (images are loaded per batch).
    resamples, seed
        Bootstrap resamples and their seed (paper: 1,000).
    text_metrics
        Model-based report metrics (:func:`.text_metrics.load_text_metrics`).
    skipped
        ``{metric: reason}`` of metrics not computed, passed through to the result.
    predictions
        When given, one entry per case is appended: the answer text (reports,
        classification) or per-class scores, with the reference text of reports,
        so external scorers (RadGraph, RadCliQ) can run on the same outputs.
    baselines
        Per report task, a constant answer (:func:`constant_baselines` on the training split) scored
        on BLEU-4 and ROUGE-L beside the model, as ``task/constant_baseline/metric``.
    majority
        VQA and region captioning: the training split's most frequent answer per question kind
        (:func:`majority_answers`), scored as ``task/constant_baseline/accuracy``.
    confusion_probes
        Also ask each record the tasks it has no reference for (:func:`probe_tasks`: the impression
        and full report of a radiograph with findings only) and report their task confusion alone;
        only tasks the checkpoint declares (the node asks no others).

    Returns
    -------
    ``{"task/class/metric": {"mean", "ci_low", "ci_high", "n"}, ..., "skipped": {metric: reason}}``
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    baselines = baselines or {}
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cases: list[_Case] = []
    per_task: dict[Task, int] = defaultdict(int)
    declaration = getattr(analyzer, "declaration", None)
    # A probe stands for a request the node sends; it sends none for a task the checkpoint does not declare.
    declares = declaration.declares if declaration is not None else (lambda task: True)
    ignored: dict[str, int] = defaultdict(int)
    for record in records:
        tasks = tasks_of(record)
        if not tasks:
            ignored[type(record).__name__] += 1
        probes = [t for t in probe_tasks(record) if declares(t)] if confusion_probes else []
        for task in [*tasks, *probes]:
            if limit is None or per_task[task] < limit:
                per_task[task] += 1
                cases.append(_Case(task, record, scored=task not in probes))
    for kind, count in ignored.items():
        LOGGER.info("not evaluated: %d %s record(s) (no evaluation task for them yet)", count, kind)
    LOGGER.info("evaluating %d case(s): %s", len(cases), ", ".join(f"{t.value} {n}" for t, n in per_task.items()))
    captions = sorted({c.record.caption for c in cases if isinstance(c.record, RegionCaptionRecord)})

    for start in range(0, len(cases), batch_size):
        batch = cases[start:start + batch_size]
        fields = declaration.context_fields if declaration is not None else None
        requests = [requests_for(c, fields) for c in batch]
        answers = analyzer.run([r for group in requests for r in group])
        at = 0
        for case, group in zip(batch, requests, strict=False):
            case.outcome = _outcome(case, answers[at:at + len(group)])
            case.confused = confused(case.task, case.record.modality, group, answers[at:at + len(group)],
                                     captions)
            at += len(group)
            if predictions is not None:
                predictions.append(_prediction(case))
        LOGGER.info("answered %d/%d case(s)", min(start + batch_size, len(cases)), len(cases))

    by_task: dict[Task, list[_Case]] = defaultdict(list)
    for case in cases:
        by_task[case.task].append(case)
    bootstrap = {"resamples": resamples, "seed": seed}
    results: dict[str, dict] = {}
    for task in Task:
        asked = by_task.get(task)
        if not asked:
            continue
        task_cases = [c for c in asked if c.scored]
        if not task_cases:  # confusion probes only: no reference to score their answers against
            pass
        elif task.family is TaskFamily.SEGMENTATION:
            results.update(_per_class(task, task_cases, "dice", bootstrap))
        elif task.family is TaskFamily.DETECTION:
            results.update(_per_class(task, task_cases, "iou", bootstrap))
        elif task.family is TaskFamily.CLASSIFICATION:
            results.update(_classification(task, task_cases, bootstrap))
        elif task in REPORT_TASKS:
            results.update(_reports(task, task_cases, text_metrics, bootstrap, baselines.get(task)))
        elif task in ANSWER_TASKS:
            results.update(_answers(task, task_cases, bootstrap, (majority or {}).get(task)))
        results[_key(task, "all", "confusion")] = eval_metrics.bootstrap_mean([float(c.confused) for c in asked],
                                                                         **bootstrap)
    results[SKIPPED] = dict(skipped or {})
    return results


def training_volumes(analyzer: Any, train_records: Sequence[Record], **kwargs: Any) -> dict[str, dict]:
    """Dice per organ (and task confusion) on the training split's CT volumes, keyed ``..._training_ct``.

    medinterp-mini has one labelled CT and it is a training volume: these figures show that each organ
    prompt is answered with its own organ, not how the model generalises.
    """
    volumes = [r for r in train_records if isinstance(r, SegmentationRecord) and isinstance(r.image, VolumeFile)]
    if not volumes:
        return {}
    results = evaluate(analyzer, volumes, **kwargs)
    results.pop(SKIPPED, None)
    out = {}
    for key, value in results.items():
        task, name, metric = key.split("/")
        out[f"{task}/{name}_training_ct/{metric}"] = value
    return out


def constant_baselines(train_records: Sequence[Record], tasks: Iterable[Task] = REPORT_TASKS) -> dict[Task, str]:
    """Per report task, the single training text with the best corpus BLEU-4 against all training texts.

    Candidates and references are the task's texts of the *training* records with images (the notes a
    model would be scored like); the holdout never enters the choice.
    """
    out = {}
    for task in tasks:
        texts = [_report_reference(r, task) for r in train_records
                 if isinstance(r, ReportRecord) and r.images and task in tasks_for(r)]
        references = [eval_metrics.tokenize(t) for t in texts]
        best, best_score = None, -1.0
        for candidate in dict.fromkeys(texts):
            tokens = eval_metrics.tokenize(candidate)
            stats = np.sum([eval_metrics.bleu_stats(tokens, ref) for ref in references], axis=0)
            score = eval_metrics.bleu_from_stats(stats)
            if score > best_score:
                best, best_score = candidate, score
        if best is not None:
            out[task] = best
    return out


def majority_answers(train_records: Sequence[Record]) -> dict[Task, dict[str, str]]:
    """Per answer task, the most frequent *training* answer of each question kind (ties: alphabetical first).

    VQA is keyed by :func:`question_kind` (the question), region captioning by ``"all"`` (one caption
    for every box). The constant baseline a model must beat; the holdout never enters the choice.
    """
    counts: dict[Task, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for record in train_records:
        if isinstance(record, (VQARecord, RegionCaptionRecord)):
            task = Task.VQA if isinstance(record, VQARecord) else Task.REGION_CAPTIONING
            counts[task][question_kind(record)][normal_answer(_reference_answer(record))] += 1
    return {task: {kind: min(answers, key=lambda a: (-answers[a], a)) for kind, answers in kinds.items()}
            for task, kinds in counts.items()}


def read_records(data: str | Path, split: str, dataset: str = "medinterp-mini") -> list[Record]:
    """Records of one split of a dataset folder, read through the dataset registry."""
    from .datasets.registry import read_dataset

    return list(read_dataset(dataset, Path(data), split))


# --- Markdown -------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(results: dict[str, dict], title: str = "") -> str:
    """A table like the paper's Tables 1-3: task, class, metric, mean [95% CI], n.

    Values are on a 0-1 scale (the paper prints BLEU-4 and the text metrics x100), except
    rescaled BERTScore (may be negative) and RadCliQ-v1 (centred on 0, lower is better).
    Metrics listed under ``"skipped"`` follow the table with their reasons.
    """
    lines = [f"## {title}", ""] if title else []
    lines += ["| Task | Class | Metric | Mean [95% CI] | n |", "|---|---|---|---|---|"]
    for key, value in results.items():
        if key == SKIPPED:
            continue
        task, name, metric = key.split("/")
        task_name = "VQA" if task == Task.VQA.value else task.replace("_", " ").capitalize()
        lines.append(f"| {task_name} | {name.replace('_', ' ')} | {METRIC_NAMES.get(metric, metric)} | "
                     f"{_fmt(value['mean'])} [{_fmt(value['ci_low'])}, {_fmt(value['ci_high'])}] | {value['n']} |")
    skipped = results.get(SKIPPED) or {}
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {metric}: {reason}" for metric, reason in skipped.items()]
    return "\n".join(lines) + "\n"


__all__ = ["SKIPPED", "closed_options", "confused", "constant_baselines", "evaluate", "majority_answers",
           "named_classes", "normal_answer", "probe_tasks", "question_kind", "read_records", "render_markdown",
           "requests_for", "tasks_of", "training_volumes"]
