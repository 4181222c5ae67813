"""Loading the model to run: a checkpoint folder, a named preset, or the bundled demo.

The bundled demo checkpoint (``assets/demo-model``, written by ``medversa train
--recipe demo``) is what ``serve``, ``infer`` and ``eval`` run when given none;
until it exists, the ``tiny`` preset with random weights, announced loudly: its
answers are meaningless.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analyzer import Analyzer

LOGGER = logging.getLogger(__name__)

BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "demo-model"
FALLBACK_PRESET = "tiny"


def load_analyzer(checkpoint: str | Path | None = None, *, preset: str | None = None, device: str | None = None,
                  max_batch_size: int | None = None, max_new_tokens: int | None = None) -> Analyzer:
    """An :class:`~.analyzer.Analyzer` on ``device`` (default: CUDA when there is one, else the CPU).

    ``checkpoint``: a folder ``medversa train`` (or ``save_checkpoint``) wrote; it wins over
    ``preset``, a preset name (:func:`~.presets.list_presets`) built with RANDOM weights (tests,
    benchmarks). Neither: the bundled demo model, else the ``tiny`` preset. The batch and
    answer-length limits default to the model's configuration.
    """
    from .analyzer import Analyzer

    limits = {"max_batch_size": max_batch_size, "max_new_tokens": max_new_tokens}
    if checkpoint:
        return Analyzer.from_checkpoint(checkpoint, device=device, **limits)
    if preset:
        LOGGER.warning("using preset %r with RANDOM weights: results are meaningless (not a trained model)", preset)
        return Analyzer.from_preset(preset, device=device, **limits)
    if (BUNDLED_CHECKPOINT / "medversa-checkpoint.json").is_file():
        return Analyzer.from_checkpoint(BUNDLED_CHECKPOINT, device=device, **limits)
    LOGGER.warning("no bundled demo model yet: using the %r preset with RANDOM weights; results are meaningless",
                   FALLBACK_PRESET)
    return Analyzer.from_preset(FALLBACK_PRESET, device=device, **limits)


def model_identity(analyzer: Analyzer) -> str:
    """The weights identity of a loaded model (checkpoint SHA-256, or a preset marker)."""
    return getattr(analyzer, "model_id", "") or "random-" + analyzer.model.config.name
