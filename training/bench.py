"""Training throughput per task: forward, backward and optimizer step on one batch of each pool.

Uses medinterp-mini when given (real image sizes and report lengths), else
synthetic records built here, so the benchmark runs from a plain checkout.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from medversa.inference.checkpoint import build_model
from medversa.inference.tasks import Modality

from .batching import collate
from .objective import TrainingObjective
from .records import ArrayImage, ArrayMask, Record, SegmentationRecord, TextRecord
from .sampler import DomainAwareSampler
from .samples import build_sample

BATCH = {"cxr": 8, "derm": 8, "ct": 1}


def synthetic_records(seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    img = ArrayImage(rng.integers(0, 255, (256, 256), dtype=np.uint8))
    vol = ArrayImage(rng.normal(0, 300, (40, 96, 96)).astype(np.float32))
    text = "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
    return [
        TextRecord("synthetic", "t0", Modality.CXR, "train", findings=text, impression="No acute disease."),
        SegmentationRecord("synthetic", "s0", Modality.CXR, "train", img,
                           {"left lung": ArrayMask(np.zeros((256, 256), bool) | (np.arange(256) > 128)[None])}),
        SegmentationRecord("synthetic", "c0", Modality.CT, "train", vol,
                           {"liver": ArrayMask(np.pad(np.ones((10, 30, 30), bool), ((5, 25), (20, 46), (20, 46))))}),
    ]


def bench_training(preset: str, data: Path | None, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model, tokenizer = build_model(preset)
    objective = TrainingObjective(model, tokenizer.ids.image)
    for p in model.parameters():
        p.requires_grad = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if data:
        from .datasets.medinterp_mini import read_all

        records = read_all(data, "train")
    else:
        records = synthetic_records(seed)
    sampler = DomainAwareSampler(records, seed, BATCH)
    rng = np.random.default_rng(seed)
    out = {}
    for (modality, task), pool in sampler.pools.items():
        size = sampler.batch_size_for(modality)
        times = []
        for i in range(steps + 1):
            samples = [build_sample(pool.records[int(rng.integers(len(pool.records)))], task, rng) for _ in range(size)]
            t0 = time.perf_counter()
            batch = collate(samples, tokenizer, model.config, 256)
            losses = objective(batch)
            losses["total"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        out[f"{modality.value}/{task.value}"] = {"batch_size": size, "seconds_per_step": round(float(np.median(times)), 3),
                                                 "samples_per_s": round(size / float(np.median(times)), 2)}
    return {"preset": preset, "device": "cpu", "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "data": str(data) if data else "synthetic", "steps_per_task": steps, "tasks": out}
