"""RadCliQ-v1 (Yu et al. 2023): a linear blend of four report metrics fitted to radiologists' error counts.

Per report pair, RadCliQ-v1 standardises the four features with the mean and scale
its authors fitted and takes their weighted sum: lower is better (fewer errors
expected). The constants are those of CXR-Report-Metric's RadCliQ-v1 (the
``radcliq-v1.pkl`` normalizer and linear model); the features are computed as there:

- ``radgraph``: RadGraph F1 (:mod:`.radgraph`, ``radgraph_combined``);
- ``bertscore``: BERTScore F1 with distilroberta-base, layer 5, no idf, rescaled
  with bert-score's baseline for that layer (``--bertscore-baseline``);
- ``semb_score``: cosine of the two reports' CheXbert embeddings;
- ``bleu_score``: BLEU-2 of the single report pair, on lower-cased text split at
  spaces with each full stop its own token, no smoothing.

The paper's Tables 1-2 give RadCliQ values of about 1.7-3.4; RadCliQ-v1 centres on
0 for reports of average quality, so those figures appear to be on the scale of
RadCliQ-v0, whose fitted parameters ship only as a pickle that is not available
here. RadCliQ-v1 figures from this module are not comparable with the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import eval_metrics
from .report_metric import TextMetric

FEATURES = ("radgraph", "bertscore", "semb_score", "bleu_score")
MEAN = np.array([0.53792312, 0.61757256, 0.76479421, 0.44738335])
SCALE = np.array([0.30282584, 0.22430938, 0.25394391, 0.29892717])
COEFFICIENTS = np.array([-0.377083683, -0.370300100, -0.252616218, 4.31504841e-12])
INTERCEPT = 2.46655256e-10


def radcliq_v1(features: np.ndarray) -> np.ndarray:
    """RadCliQ-v1 per row of ``[reports, 4]`` features in the order of :data:`FEATURES`."""
    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or features.shape[1] != len(FEATURES):
        raise ValueError(f"RadCliQ-v1 takes [reports, {len(FEATURES)}] features {FEATURES}, got {features.shape}")
    return ((features - MEAN) / SCALE) @ COEFFICIENTS + INTERCEPT


def report_tokens(text: str) -> list[str]:
    """CXR-Report-Metric's BLEU tokens: lower-cased, '.' split off, split at single spaces."""
    return [t for t in str(text).lower().replace(".", " .").split(" ") if t]


def bleu2(candidate: str, reference: str) -> float:
    """BLEU-2 of one report pair (no smoothing: 0 without a matching bigram)."""
    stats = eval_metrics.bleu_stats(report_tokens(candidate), report_tokens(reference), 2)
    return eval_metrics.bleu_from_stats(stats, 2)


class RadCliQ:
    """Per-report RadCliQ-v1 from its three model-based features and BLEU-2 (lower is better)."""

    name = "radcliq"

    def __init__(self, radgraph: TextMetric, bertscore: TextMetric, chexbert: TextMetric) -> None:
        self.parts = (radgraph, bertscore, chexbert)

    def features(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        columns = [part.score(candidates, references) for part in self.parts]
        columns.append(np.array([bleu2(c, r) for c, r in zip(candidates, references, strict=True)], dtype=float))
        return np.column_stack(columns) if len(candidates) else np.zeros((0, len(FEATURES)))

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
        return radcliq_v1(self.features(candidates, references))
