"""What a per-report text metric is: the interface the evaluation calls for every report metric.

The model-based metrics (:mod:`.text_metrics`), RadGraph F1 (:mod:`.radgraph`) and
RadCliQ-v1 (:mod:`.radcliq`, built from three of them) all implement it, and
:mod:`.text_metrics` assembles them; keeping the interface here lets RadCliQ name
its parts without importing the module that builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class TextMetric(Protocol):
    """A per-report text metric: one score per (candidate, reference) pair."""

    name: str

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray: ...
