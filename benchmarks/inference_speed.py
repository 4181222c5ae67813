"""Inference benchmark: per-task latency and decode cost per token (``medversa bench inference``).

Figures come from randomly initialised presets (weights do not change the cost
of a forward pass). Per-token cost is measured by decoding a fixed number of
tokens with stopping disabled; with the KV cache each step feeds one token, so
the milliseconds per token stay flat from 32 to 256 new tokens. On CUDA the
benchmark also measures device copy bandwidth and compares decode throughput
with the memory-bandwidth bound (all weight bytes are read once per step).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medversa.inference import Analyzer, ImageInput, Modality, Task, TaskRequest, build_prompt_ids, embed_with_images
from medversa.inference.generation import ForcedTokens, generate, greedy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_requests(rng: np.random.Generator) -> list[TaskRequest]:
    """One request per task on synthetic inputs of realistic size."""
    cxr = ImageInput(rng.integers(0, 256, (512, 512), dtype=np.uint8))
    prior = ImageInput(rng.integers(0, 256, (512, 512), dtype=np.uint8))
    derm = ImageInput(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8))
    ct = ImageInput(rng.normal(0, 200, (40, 256, 256)).astype(np.float32), volume=True)
    return [
        TaskRequest(Task.REPORT_FINDINGS, Modality.CXR, [cxr], context="Age: 60. Indication: dyspnea."),
        TaskRequest(Task.REPORT_IMPRESSION, Modality.CXR, [cxr]),
        TaskRequest(Task.REPORT_FULL, Modality.CXR, [cxr]),
        TaskRequest(Task.CHEST_PATHOLOGY_CLASSIFICATION, Modality.CXR, [cxr]),
        TaskRequest(Task.SKIN_LESION_CLASSIFICATION, Modality.DERM, [derm]),
        TaskRequest(Task.ANATOMY_DETECTION, Modality.CXR, [cxr]),
        TaskRequest(Task.PATHOLOGY_DETECTION, Modality.CXR, [cxr]),
        TaskRequest(Task.CHEST_ORGAN_SEGMENTATION, Modality.CXR, [cxr], targets=("left lung",)),
        TaskRequest(Task.SKIN_LESION_SEGMENTATION, Modality.DERM, [derm]),
        TaskRequest(Task.ABDOMINAL_ORGAN_SEGMENTATION, Modality.CT, [ct], targets=("liver",)),
        TaskRequest(Task.VQA, Modality.CXR, [cxr], question="Is there a pleural effusion in <img0>?"),
        TaskRequest(Task.REGION_CAPTIONING, Modality.CXR, [cxr], region=(100, 100, 300, 400)),
        TaskRequest(Task.LONGITUDINAL_COMPARISON, Modality.CXR, [cxr, prior], num_current=1),
    ]


#: Answers planted for the vision tasks so that their modules run (random weights rarely emit task tokens).
PLANTED = {
    Task.ANATOMY_DETECTION: "left lung <DET>, right lung <DET>, cardiac silhouette <DET>, mediastinum <N/A>.###",
    Task.PATHOLOGY_DETECTION: "pleural effusion <DET>, lung opacity <N/A>.###",
    Task.CHEST_ORGAN_SEGMENTATION: "The segmentation mask of left lung is <2DSEG>.###",
    Task.SKIN_LESION_SEGMENTATION: "The segmentation mask of skin lesion is <2DSEG>.###",
    Task.ABDOMINAL_ORGAN_SEGMENTATION: "The segmentation mask of liver is <3DSEG>.###",
}


def bench_tasks(analyzer: Analyzer, repeats: int = 2) -> dict[str, dict[str, float]]:
    """Latency per task: text tasks decode max_new_tokens greedily, vision tasks a planted answer."""
    out: dict[str, dict[str, float]] = {}
    for request in sample_requests(np.random.default_rng(0)):
        times, tokens = [], 0
        planted = PLANTED.get(request.task)
        choose = ForcedTokens([analyzer.tokenizer.encode(planted)]) if planted else greedy
        for _ in range(repeats):
            t0 = time.perf_counter()
            answer = analyzer.run([request], choose=choose)[0]
            _sync(analyzer.device)
            times.append(time.perf_counter() - t0)
            tokens = answer.generated_tokens
        best = min(times)
        out[request.task.value] = {
            "answer": "planted" if planted else "greedy",
            "latency_s": round(best, 4),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / best, 1),
        }
    return out


def _prompt_embeds(analyzer: Analyzer, batch: int) -> list[torch.Tensor]:
    cfg = analyzer.model.config
    with torch.inference_mode():
        side = cfg.preprocess.image_size
        image = torch.zeros(1, 3, side, side, device=analyzer.device, dtype=analyzer.dtype)
        tokens = analyzer.model.encode_2d(image)
        prompt = build_prompt_ids(analyzer.tokenizer, 1, "Can you provide a radiology report for <img0>?", "", True,
                                  cfg.num_visual_tokens)
        ids = torch.tensor(prompt.ids, device=analyzer.device)
        embeds = embed_with_images(analyzer.model.embed_ids, ids, analyzer.tokenizer.ids.image, tokens)
    return [embeds] * batch


def bench_decode(analyzer: Analyzer, lengths: tuple[int, ...] = (32, 128, 256), batch: int = 1,
                 repeats: int = 5) -> dict[str, Any]:
    """Milliseconds per generated token at several output lengths (prefill subtracted)."""
    embeds = _prompt_embeds(analyzer, batch)
    filler = analyzer.tokenizer.encode("the")[0]
    results: dict[str, Any] = {}

    def timed(n: int) -> float:
        runs = []
        for _ in range(repeats):
            _sync(analyzer.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                generate(analyzer.model, analyzer.tokenizer, embeds, n, ForcedTokens([[filler] * n] * batch),
                         end_sym=None)
            _sync(analyzer.device)
            runs.append(time.perf_counter() - t0)
        return min(runs)  # least disturbed run on a shared machine

    timed(4)  # warm-up
    prefill = timed(1)
    for n in lengths:
        total = timed(n)
        per_token = (total - prefill) / max(n - 1, 1)
        results[str(n)] = {
            "total_s": round(total, 4),
            "ms_per_token": round(per_token * 1e3, 3),
            "tokens_per_s": round(batch / per_token, 1),
        }
    first, last = results[str(lengths[0])]["ms_per_token"], results[str(lengths[-1])]["ms_per_token"]
    results["prefill_s"] = round(prefill, 4)
    results["cost_ratio_last_vs_first"] = round(last / first, 3)
    return results


def copy_bandwidth(device: torch.device, size_mb: int = 1024, repeats: int = 10) -> float:
    """Device memory bandwidth in bytes/s from a large tensor copy (read + write counted)."""
    src = torch.empty(size_mb * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    return 2 * src.numel() * repeats / (time.perf_counter() - t0)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every weight read in one decode step (all parameters of the LLM)."""
    lm = model.causal_lm if hasattr(model, "causal_lm") else model
    return sum(p.numel() * p.element_size() for p in lm.parameters())


def run_benchmark(preset: str, device: str | None = None, batches: tuple[int, ...] = (1,),
                  lengths: tuple[int, ...] = (32, 128, 256), tasks: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    analyzer = Analyzer.from_preset(preset, device=device, max_new_tokens=32)
    report: dict[str, Any] = {
        "preset": preset,
        "device": str(analyzer.device),
        "dtype": str(analyzer.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in analyzer.model.parameters()),
        "build_s": round(time.perf_counter() - t0, 2),
        "weights": "random (preset built from its config)",
    }
    if tasks:
        report["tasks"] = bench_tasks(analyzer)
    report["decode"] = {f"batch_{b}": bench_decode(analyzer, lengths, b) for b in batches}
    if analyzer.device.type == "cuda":
        bandwidth = copy_bandwidth(analyzer.device)
        wbytes = weight_bytes(analyzer.model)
        report["bandwidth"] = {"copy_GBps": round(bandwidth / 1e9, 1), "llm_weight_GB": round(wbytes / 1e9, 2)}
        for b in batches:
            measured = report["decode"][f"batch_{b}"][str(lengths[-1])]["tokens_per_s"]
            bound = b * bandwidth / wbytes
            report["decode"][f"batch_{b}"]["bandwidth_bound_tokens_per_s"] = round(bound, 1)
            report["decode"][f"batch_{b}"]["fraction_of_bound"] = round(measured / bound, 3)
    return report
