"""The model ``serve`` and ``infer`` use when none is given.

The bundled demo checkpoint (``assets/demo-model``, written by ``medversa train
--recipe demo``) when it exists; until then the ``tiny`` preset with random
weights, announced loudly: its answers are meaningless.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)

BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "demo-model"
FALLBACK_PRESET = "tiny"


def load_default_analyzer(checkpoint: str | Path | None = None, preset: str | None = None,
                          device: str | None = None):
    """An Analyzer for ``checkpoint`` or ``preset``, else the bundled model."""
    from .analyzer import Analyzer

    if checkpoint:
        return Analyzer.from_checkpoint(checkpoint, device=device)
    if preset:
        LOGGER.warning("using preset %r with RANDOM weights: results are meaningless (not a trained model)", preset)
        return Analyzer.from_preset(preset, device=device)
    if (BUNDLED_CHECKPOINT / "medversa-checkpoint.json").is_file():
        return Analyzer.from_checkpoint(BUNDLED_CHECKPOINT, device=device)
    LOGGER.warning("no bundled demo model yet: using the %r preset with RANDOM weights; results are meaningless",
                   FALLBACK_PRESET)
    return Analyzer.from_preset(FALLBACK_PRESET, device=device)


def model_identity(analyzer) -> str:
    """The weights identity of a loaded model (checkpoint SHA-256, or a preset marker)."""
    return getattr(analyzer, "model_id", "") or "random-" + analyzer.model.config.name
