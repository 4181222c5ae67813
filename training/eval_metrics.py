"""The paper's evaluation metrics and their bootstrap confidence intervals (Methods).

- Reports: corpus-level BLEU-4 (Papineni et al. 2002; uniform weights, clipped
  n-gram counts summed over the corpus, brevity penalty ``exp(1 - r/c)`` when
  the candidates are shorter than the references; no smoothing, so a corpus
  with no matching 4-gram scores 0). Scores are in [0, 1]; the paper's tables
  print them x100.
- Classification: per-class F1 at threshold 0.5 and their macro mean
  (Methods: "a default threshold 0.5 is sufficient").
- Detection: IoU of boxes. Segmentation: Dice of masks.
- 95% confidence intervals: non-parametric bootstrap, 1,000 resamples of the
  evaluation set with replacement, each the size of the set, percentile method
  (2.5th and 97.5th percentiles; Methods, "Confidence intervals").

Everything is plain numpy so the evaluation needs no metric library.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from medversa.inference import PixelBox, box_overlap

#: BLEU-N order used throughout the paper's tables.
BLEU_ORDER = 4
#: Bootstrap defaults (paper, Methods: "Confidence intervals").
RESAMPLES = 1000
CONFIDENCE = 0.95
#: Classification decision threshold (paper, Methods).
THRESHOLD = 0.5

_WORD = re.compile(r"[a-z0-9]+")


# --- BLEU-4 ---------------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped.

    Report-generation papers score BLEU with the COCO caption tokenizer, which
    lower-cases and removes punctuation; this is its plain-regex equivalent.
    """
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(candidate: Sequence[str], reference: Sequence[str], order: int = BLEU_ORDER) -> np.ndarray:
    """One document's sufficient statistics for corpus BLEU.

    ``[matches_1, total_1, ..., matches_N, total_N, candidate_length, reference_length]``:
    clipped n-gram matches, candidate n-gram counts and the two lengths. Corpus
    BLEU is :func:`bleu_from_stats` of their sum, which makes bootstrap
    resampling of documents a sum over rows.
    """
    stats = np.zeros(2 * order + 2, dtype=np.int64)
    for n in range(1, order + 1):
        cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
        stats[2 * n - 2] = sum(min(count, ref[gram]) for gram, count in cand.items())
        stats[2 * n - 1] = max(len(candidate) - n + 1, 0)
    stats[-2] = len(candidate)
    stats[-1] = len(reference)
    return stats


def bleu_from_stats(stats: np.ndarray, order: int = BLEU_ORDER) -> float:
    """BLEU from summed :func:`bleu_stats` rows (geometric mean of precisions x brevity penalty)."""
    matches = stats[0:2 * order:2].astype(float)
    totals = stats[1:2 * order:2].astype(float)
    cand_len, ref_len = float(stats[-2]), float(stats[-1])
    if cand_len == 0 or np.any(matches == 0):
        return 0.0
    log_precision = float(np.mean(np.log(matches / totals)))
    brevity = 1.0 if cand_len > ref_len else float(np.exp(1.0 - ref_len / cand_len))
    return brevity * float(np.exp(log_precision))


def corpus_bleu(candidates: Sequence[str], references: Sequence[str], order: int = BLEU_ORDER) -> float:
    """Corpus-level BLEU of candidate texts against one reference text each."""
    return bleu_from_stats(bleu_stats_matrix(candidates, references, order).sum(axis=0), order)


def bleu_stats_matrix(candidates: Sequence[str], references: Sequence[str], order: int = BLEU_ORDER) -> np.ndarray:
    """``[documents, 2 * order + 2]`` statistics of tokenised text pairs."""
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
    rows = [bleu_stats(tokenize(c), tokenize(r), order) for c, r in zip(candidates, references, strict=False)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2 * order + 2)


# --- classification F1 ----------------------------------------------------------------------------
def f1_counts(y_true: np.ndarray, y_score: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Per-case true-positive, false-positive and false-negative indicators, ``[cases, classes, 3]``.

    ``y_true`` is 0/1 ``[cases, classes]``; ``y_score`` is a score in [0, 1]
    (or 0/1 from a text answer) and is positive when ``>= threshold``.
    """
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_score, dtype=float) >= threshold
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_pred.shape} must be the same [cases, classes] shape")
    return np.stack([y_true & y_pred, ~y_true & y_pred, y_true & ~y_pred], axis=-1).astype(np.int64)


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class F1 ``2TP / (2TP + FP + FN)`` from summed ``[classes, 3]`` counts.

    A class with no true and no predicted positives has no F1 (NaN), as
    scikit-learn's ``zero_division=np.nan``; it is left out of the macro mean.
    """
    tp, fp, fn = (counts[..., k].astype(float) for k in range(3))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def f1_per_class(y_true: np.ndarray, y_score: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """F1 of each class (column) at ``threshold``."""
    return f1_from_counts(f1_counts(y_true, y_score, threshold).sum(axis=0))


def macro_f1(y_true: np.ndarray, y_score: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Unweighted mean of the defined per-class F1 scores (NaN when none is defined)."""
    return _nanmean(f1_per_class(y_true, y_score, threshold))


# --- boxes and masks ------------------------------------------------------------------------------
#: Intersection over union of two boxes: the analyzer's own (its duplicate-box suppression), one formula.
box_iou = box_overlap


def match_boxes(truth: Sequence[PixelBox], predicted: Sequence[PixelBox]) -> list[float]:
    """IoU of every ground-truth box with its matched prediction (0 when unmatched).

    Pairs are matched one-to-one, highest IoU first, so one predicted box cannot
    be credited to two ground-truth boxes of the same class.
    """
    pairs = sorted(((box_iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(predicted)), reverse=True)
    ious = [0.0] * len(truth)
    used_t: set[int] = set()
    used_p: set[int] = set()
    for iou, i, j in pairs:
        if iou > 0 and i not in used_t and j not in used_p:
            ious[i] = iou
            used_t.add(i)
            used_p.add(j)
    return ious


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity ``2|P & T| / (|P| + |T|)`` of two boolean masks of the same shape.

    Two empty masks score 1: the model correctly drew nothing where there is
    nothing (a convention, as in MONAI's ``ignore_empty=False``; documented so
    absent structures are not silently counted as failures).
    """
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted mask {predicted.shape} and ground truth {truth.shape} differ in shape")
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, truth).sum()) / total


# --- bootstrap ------------------------------------------------------------------------------------
def bootstrap(statistic: Callable[[np.ndarray], float], n: int, resamples: int = RESAMPLES,
              seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, float | int | None]:
    """Point estimate and percentile bootstrap interval of ``statistic``.

    ``statistic`` takes an index array into the ``n`` evaluation cases (all of
    them for the point estimate, a resample with replacement of size ``n`` for
    each of the ``resamples`` replicates). Replicates where the statistic is
    undefined (NaN, e.g. an F1 whose class no resample case has) are left out of
    the percentiles. Returns ``{"mean", "ci_low", "ci_high", "n"}``; ``mean`` is
    the metric on the whole set, as the paper reports it; undefined values are None.
    """
    if n < 1:
        raise ValueError(f"bootstrap needs at least one case, got n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    replicates = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    replicates = replicates[~np.isnan(replicates)]
    tail = 100 * (1 - confidence) / 2
    low, high = (np.percentile(replicates, [tail, 100 - tail]) if replicates.size else (np.nan, np.nan))
    return {"mean": _none_if_nan(point), "ci_low": _none_if_nan(low), "ci_high": _none_if_nan(high), "n": n}


Interval = dict[str, float | int | None]


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-pair ROUGE-L F-measure (Google's rouge-score, stemming on, as report papers score it)."""
    from rouge_score import rouge_scorer

    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references, strict=False)]


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Bootstrap interval of the mean of per-case values (Dice, IoU, a per-report score)."""
    v = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(v[idx].mean()), len(v), resamples, seed)


def bootstrap_bleu(candidates: Sequence[str], references: Sequence[str], resamples: int = RESAMPLES,
                   seed: int = 0) -> Interval:
    """Corpus BLEU-4 with a bootstrap interval over documents (each resample is its own corpus)."""
    stats = bleu_stats_matrix(candidates, references)
    return bootstrap(lambda idx: bleu_from_stats(stats[idx].sum(axis=0)), len(stats), resamples, seed)


def bootstrap_f1(y_true: np.ndarray, y_score: np.ndarray, threshold: float = THRESHOLD, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[list[Interval], Interval]:
    """Per-class F1 and macro-mean F1, each with a bootstrap interval over cases."""
    counts = f1_counts(y_true, y_score, threshold)
    n, classes = counts.shape[:2]

    def class_f1(c: int) -> Callable[[np.ndarray], float]:
        return lambda idx: float(f1_from_counts(counts[idx, c].sum(axis=0)))

    per_class = [bootstrap(class_f1(c), n, resamples, seed) for c in range(classes)]
    macro = bootstrap(lambda idx: _nanmean(f1_from_counts(counts[idx].sum(axis=0))), n, resamples, seed)
    return per_class, macro


def bootstrap_class_means(sums: np.ndarray, counts: np.ndarray, resamples: int = RESAMPLES,
                          seed: int = 0) -> tuple[list[Interval], Interval]:
    """Per-class means and their macro mean when one case holds several values per class.

    ``sums`` and ``counts`` are ``[cases, classes]``: the sum and number of a
    case's values of each class (e.g. IoUs of its boxes). Cases are resampled
    whole, so values of one image stay together: a class's interval resamples
    the cases that have it, the macro mean's all cases. Each class's ``n`` is the
    number of values it has; the macro mean's ``n`` the number of cases.
    """
    sums = np.asarray(sums, dtype=float)
    counts = np.asarray(counts, dtype=float)
    n, classes = sums.shape

    def class_means(idx: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[idx].sum(axis=0) / counts[idx].sum(axis=0)

    def class_mean(c: int, rows: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda idx: float(class_means(rows[idx])[c])

    per_class = []
    for c in range(classes):
        rows = np.flatnonzero(counts[:, c] > 0)
        result = bootstrap(class_mean(c, rows), len(rows), resamples, seed)
        result["n"] = int(counts[:, c].sum())
        per_class.append(result)
    macro = bootstrap(lambda idx: _nanmean(class_means(idx)), n, resamples, seed)
    return per_class, macro


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
