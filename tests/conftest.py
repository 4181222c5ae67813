"""Shared fixtures: the tiny model, and ../shared where it exists (tests needing it skip otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The disk-fill thresholds watch the whole file system, and a test host's disk is filled by others
# (CI's was above the 0.85 default): emergency retention then removed every delivered study's files
# right after export, under the tests' feet. Every node a test starts inherits this environment;
# the tests of the thresholds themselves set them by flag or fake the fill, and flags beat it.
os.environ.setdefault("MEDVERSA_RETENTION__CLEANUP_ABOVE", "1.0")
os.environ.setdefault("MEDVERSA_RETENTION__REFUSE_ABOVE", "1.0")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDVERSA_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
OFFICIAL_TSV = REFERENCE / "medversa-official-state-dict.tsv"
TINY_OFFICIAL = REFERENCE / "tiny-official"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available in this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_analyzer():
    from medversa.inference import Analyzer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return Analyzer.from_preset("tiny", device="cpu", seed=0, max_new_tokens=24)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture()
def orthanc(tmp_path_factory):
    """A started Orthanc PACS (tests/orthanc.py) with no modalities; skips when it is not installed."""
    from .orthanc import orthanc_server

    server = orthanc_server(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop(kill=True)
