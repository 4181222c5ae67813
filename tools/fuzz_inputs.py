"""Fuzz the node's input path for longer than CI does, and print what came out.

The same mutations and path as ``tests/test_fuzz_inputs.py`` (``tests/bad_inputs.py``): valid data
sets with mutated bytes and element values go through pydicom, the SCP's acceptance check, series
classification, pixels / CT volume and the model's task requests. Every example must end in
success or one of our clear errors within the hang limit. Exit status 1 if any did not.

Usage: python tools/fuzz_inputs.py --examples 2000 [--seed 7] [--hang-seconds 20]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="how many mutated studies (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one each run)")
    parser.add_argument("--hang-seconds", type=float, default=20.0, help="an example running longer is a hang")
    args = parser.parse_args(argv)

    from hypothesis import HealthCheck, Phase, given, seed, settings

    from medversa.node.pipeline import analyze_study  # noqa: F401 - import the model code before timing
    from tests.bad_inputs import (
        clear_errors,
        mutated_inputs,
        run_input_path,
        time_limit,
    )

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    outcomes: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    first_trace: dict[str, str] = {}
    durations: list[float] = []

    @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(blobs=mutated_inputs())
    def fuzz(blobs: list[bytes]) -> None:
        started = time.perf_counter()
        try:
            with time_limit(args.hang_seconds):
                outcomes[run_input_path(blobs)] += 1
        except clear_errors() as exc:
            outcomes[f"clear error: {type(exc).__name__}"] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding to report
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            failures[key] += 1
            first_trace.setdefault(key, traceback.format_exc())
        durations.append(time.perf_counter() - started)

    if args.seed is not None:
        fuzz = seed(args.seed)(fuzz)
    started = time.perf_counter()
    fuzz()
    total = time.perf_counter() - started

    n = len(durations)
    print(f"examples: {n} in {total:.1f} s ({n / total:.1f}/s); per example mean {1000 * sum(durations) / n:.1f} ms, "
          f"max {1000 * max(durations):.0f} ms")
    print("outcomes:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:6d}  {outcome}")
    print(f"unexpected exceptions or hangs: {sum(failures.values())}")
    for key, count in failures.most_common():
        print(f"  {count:6d}  {key}\n{first_trace[key]}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
