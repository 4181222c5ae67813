"""Training throughput per task: forward, backward and optimizer step on one batch of each pool.

Uses medinterp-mini when given (real image sizes and report lengths), else
synthetic records built here, so the benchmark runs from a plain checkout. On a GPU
the model is built there (random weights), steps run under bf16 autocast, and the
peak GPU memory of each task's steps is reported: ``medversa bench train --preset
medversa-7b --device cuda`` measures the paper's configuration (LoRA on the LLM, the
rest trainable), which is what the 7B recipe trains.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from medversa.inference import MedVersaModel, MedVersaTokenizer, Modality, create_config
from medversa.training.batching import collate
from medversa.training.objective import TrainingObjective
from medversa.training.records import ArrayImage, ArrayMask, Record, SegmentationRecord, TextRecord
from medversa.training.sampler import DomainAwareSampler
from medversa.training.samples import build_sample

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


def _random_model(preset: str) -> tuple[MedVersaModel, MedVersaTokenizer]:
    """The preset with random weights and its tokenizer, or the bundled one where its own is not here.

    The 7B preset's Llama-2 tokenizer is not shipped; the bundled tokenizer's ids all fall
    inside the 7B vocabulary, so throughput and memory (embedding and LM head keep their
    full 32,005 rows) are those of the real configuration.
    """
    config = create_config(preset)
    tokenizer = MedVersaTokenizer.from_path(config.tokenizer_path)
    if len(tokenizer) > config.llm.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than {preset}'s vocabulary")
    return MedVersaModel(config), tokenizer


def bench_training(preset: str, data: Path | None, steps: int, seed: int = 0, device: str | None = None,
                   bf16: bool | None = None, lora_only: bool | None = None,
                   gradient_checkpointing: bool = False) -> dict:
    """Samples/s per (modality, task) pool; ``bf16`` defaults to on for CUDA, ``lora_only`` for 7B."""
    from medversa.training.trainer import _set_trainable, _to_device, autocast, bf16_enabled

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    bf16 = bf16_enabled(dev, bf16)
    lora_only = preset == "medversa-7b" if lora_only is None else lora_only
    torch.manual_seed(seed)
    with dev:  # built in place: a 7B model is never materialised on the host first
        model, tokenizer = _random_model(preset)
    _set_trainable(model, train_llm_base=not lora_only)
    if gradient_checkpointing:
        model.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    objective = TrainingObjective(model, tokenizer.ids.image)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    if data:
        from medversa.training.datasets.medinterp_mini import read_all

        records = read_all(data, "train")
    else:
        records = synthetic_records(seed)
    sampler = DomainAwareSampler(records, seed, BATCH)
    rng = np.random.default_rng(seed)
    cuda = dev.type == "cuda"
    out = {}
    for (modality, task), pool in sampler.pools.items():
        size = sampler.batch_size_for(modality)
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        for i in range(steps + 1):
            samples = [build_sample(pool.records[int(rng.integers(len(pool.records)))], task, rng) for _ in range(size)]
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            batch = _to_device(collate(samples, tokenizer, model.config, 256), dev)
            with autocast(dev, bf16):
                losses = objective(batch)
            losses["total"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(dev)
            if i:
                times.append(time.perf_counter() - t0)
        row = {"batch_size": size, "seconds_per_step": round(float(np.median(times)), 3),
               "samples_per_s": round(size / float(np.median(times)), 2)}
        if cuda:
            row["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        out[f"{modality.value}/{task.value}"] = row
    return {"preset": preset, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "autocast": "bfloat16" if bf16 else "none", "lora_only": lora_only,
            "gradient_checkpointing": gradient_checkpointing,
            "parameters": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in params),
            "tokenizer_tokens": len(tokenizer), "vocabulary": model.config.llm.vocab_size,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "data": str(data) if data else "synthetic", "steps_per_task": steps, "tasks": out}
