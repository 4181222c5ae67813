"""``medversa bench train`` on the CPU: every pool is timed, and the GPU configuration's path
(bf16 autocast, LoRA only in the LLM, gradient checkpointing) runs on the tiny preset.
Figures only: nothing is timed against a target."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from medversa.benchmarks.training_speed import _random_model, bench_training


def test_bench_train_times_every_pool_with_all_weights_trainable():
    report = bench_training("tiny", None, steps=1, device="cpu")
    assert report["device"] == "cpu" and report["autocast"] == "none" and not report["lora_only"]
    assert report["trainable"] == report["parameters"]
    assert {"ct/abdominal_organ_segmentation", "cxr/chest_organ_segmentation", "cxr/report_findings"} <= set(
        report["tasks"])
    for row in report["tasks"].values():
        assert row["samples_per_s"] > 0 and row["seconds_per_step"] > 0 and "peak_memory_GiB" not in row


def test_bench_train_in_the_7b_training_configuration_on_the_tiny_preset():
    report = bench_training("tiny", None, steps=1, device="cpu", bf16=True, lora_only=True,
                            gradient_checkpointing=True)
    assert report["autocast"] == "bfloat16" and report["lora_only"] and report["gradient_checkpointing"]
    assert 0 < report["trainable"] < report["parameters"]  # the LLM's base weights are frozen
    assert all(row["samples_per_s"] > 0 for row in report["tasks"].values())


def test_the_7b_preset_builds_for_the_benchmark_without_its_tokenizer():
    with torch.device("meta"):
        model, tokenizer = _random_model("medversa-7b")
    assert model.config.llm.vocab_size == 32005 and len(tokenizer) < 32005
    assert sum(p.numel() for p in model.parameters()) > 6.5e9


def test_bench_train_cli_prints_json():
    out = subprocess.run([sys.executable, "-m", "medversa.cli", "bench", "train", "--preset", "tiny", "--steps", "1",
                          "--device", "cpu", "--json"], capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(out.stdout)
    assert report["preset"] == "tiny" and report["tasks"]
