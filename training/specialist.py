"""The specialist baseline of the paper's comparison: the 2D UNet alone, for chest organs.

The same ResNet-18-style UNet as MedVersa's 2D segmentation module (the preset's
``seg_2d`` widths), with one output channel per structure (left lung, right lung,
heart) and no language model. It trains on the same records, preprocessing,
augmentation (horizontal flip, with left/right channels swapped), loss (focal +
Dice, equal weights) and schedule as the generalist, for the same budget: as
many images as the generalist's chest-organ steps saw. Its masks go through the
same post-processing, so the Dice scores compare like with like.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from medversa.inference import MedVersaConfig, ResNetUNet2d, postprocess_mask_2d, preprocess_image

from . import eval_metrics
from .augment import hflip
from .batching import mask_to_model_2d
from .losses import MaskLoss
from .records import SegmentationRecord
from .schedule import make_scheduler
from .train_config import OptimizerConfig

STRUCTURES = ("left lung", "right lung", "heart")


def chest_organ_records(records: list) -> list[SegmentationRecord]:
    """Records with all three chest structures (JSRT/SCR), the specialist's training set."""
    return [r for r in records if isinstance(r, SegmentationRecord) and set(STRUCTURES) <= set(r.masks)]


def _example(record: SegmentationRecord, rng: np.random.Generator, config: MedVersaConfig,
             augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    image = record.image.load()
    masks = [record.masks[s].load() for s in STRUCTURES]
    if augment and rng.random() < 0.5:
        image = hflip(image)
        masks = [hflip(m) for m in masks]
        masks[0], masks[1] = masks[1], masks[0]  # the patient's left lung is now on the other side
    size = config.preprocess.image_size
    return preprocess_image(image, config.preprocess), torch.stack([mask_to_model_2d(m, size) for m in masks])


def train_specialist(records: list, config: MedVersaConfig, steps: int, batch_size: int, seed: int,
                     optimizer: OptimizerConfig, log=None) -> ResNetUNet2d:
    pool = chest_organ_records(records)
    if not pool:
        raise ValueError("no chest organ records with left lung, right lung and heart masks")
    torch.manual_seed(seed)
    s2 = config.seg_2d
    model = ResNetUNet2d(s2.channels, s2.decoder_channels, s2.num_groups, num_classes=len(STRUCTURES))
    opt = torch.optim.AdamW(model.parameters(), lr=optimizer.lr, betas=optimizer.betas,
                            weight_decay=optimizer.weight_decay)
    scheduler = make_scheduler(opt, steps, optimizer)
    loss_fn = MaskLoss()
    model.train()
    for step in range(steps):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, step])
        picks = rng.integers(len(pool), size=batch_size)
        pairs = [_example(pool[int(i)], np.random.default_rng([seed, step, k]), config, True)
                 for k, i in enumerate(picks)]
        images = torch.stack([p[0] for p in pairs])
        targets = torch.stack([p[1] for p in pairs])
        logits = model.decode(model.encode(images))
        loss = loss_fn(logits.flatten(0, 1), targets.flatten(0, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optimizer.grad_clip)
        opt.step()
        scheduler.step()
        opt.zero_grad(set_to_none=True)
        if log is not None:
            log({"step": step, "loss": float(loss.detach()), "seconds": time.perf_counter() - t0})
    return model.eval()


@torch.no_grad()
def evaluate_specialist(model: ResNetUNet2d, records: list, config: MedVersaConfig,
                        resamples: int = eval_metrics.RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Dice per structure on ``records`` (holdout), keys as ``medversa eval`` writes them."""
    pool = chest_organ_records(records)
    scores: dict[str, list[float]] = {s: [] for s in STRUCTURES}
    for record in pool:
        image = record.image.load()
        logits = model.decode(model.encode(preprocess_image(image, config.preprocess)[None]))[0]
        for channel, structure in enumerate(STRUCTURES):
            predicted = postprocess_mask_2d(logits[channel], image.shape[:2], config.preprocess)
            scores[structure].append(eval_metrics.dice(predicted, record.masks[structure].load()))
    out = {}
    for structure, values in scores.items():
        key = f"chest_organ_segmentation/{structure.replace(' ', '_')}/dice"
        out[key] = eval_metrics.bootstrap_mean(values, resamples, seed)
    out["chest_organ_segmentation/mean/dice"] = eval_metrics.bootstrap_mean(
        [float(np.mean(v)) for v in zip(*scores.values(), strict=False)], resamples, seed)
    return out
