"""Learning-rate schedule of the paper: linear warm-up from 1e-7, then cosine from 3e-4 to 3e-6."""

from __future__ import annotations

import math

import torch

from .train_config import OptimizerConfig


def learning_rate(step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """The rate used for optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / cfg.warmup_steps
    span = max(1, total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimizerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over base rate ``cfg.lr`` (its state_dict is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, total_steps, cfg) / cfg.lr)
