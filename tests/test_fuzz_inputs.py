"""Hypothesis fuzz of the input path: valid data sets with mutated bytes and element values go
through pydicom, the SCP's acceptance check, series classification, pixels / CT volume and the
model's task requests (tests/bad_inputs.py). Only success or our own clear errors may come out,
never another exception and never a hang. ``tools/fuzz_inputs.py --examples N`` runs it longer.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

# Imported here so that the first example does not pay for importing the model code.
from medversa.node.pipeline import analyze_study  # noqa: F401 - torch and the Analyzer (plan needs neither)

from .bad_inputs import clear_errors, mutated_inputs, run_input_path, time_limit
from .reliability import record_case

EXAMPLES = 60
#: Longest one example may take before it counts as a hang (the slowest seen take well under 1 s).
HANG_S = 20.0

_outcomes: Counter[str] = Counter()

#: pydicom warns about every odd value it reads: expected here by the thousand.
pytestmark = pytest.mark.filterwarnings("ignore")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blobs=mutated_inputs())
def _fuzz(blobs: list[bytes]) -> None:
    with time_limit(HANG_S):
        try:
            _outcomes[run_input_path(blobs)] += 1
        except clear_errors() as exc:
            _outcomes[type(exc).__name__] += 1


def test_mutated_inputs_give_a_result_or_a_clear_error() -> None:
    _outcomes.clear()
    started = time.perf_counter()
    _fuzz()
    seconds = time.perf_counter() - started
    assert sum(_outcomes.values()) >= EXAMPLES
    record_case("bad input", "fuzzed data sets (bytes and element values mutated, Hypothesis)",
                "success or a clear error; no other exception, no hang",
                examples=sum(_outcomes.values()), seconds=round(seconds, 1),
                outcomes="; ".join(f"{k}: {v}" for k, v in _outcomes.most_common()))
