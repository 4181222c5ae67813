"""``medversa train``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .train_config import TrainConfig, recipe_path

LOGGER = logging.getLogger(__name__)


def train(
    config: Annotated[Path | None, typer.Option("--config", help="Training config YAML")] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="A shipped recipe (training/recipes), e.g. 'demo'")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Output folder (overrides the config's output_dir)")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Override the number of steps")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Root folder replacing every dataset root of the config")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest saved state in the output folder")
    ] = False,
    stop_at: Annotated[
        int | None, typer.Option("--stop-at", help="Save state and stop after this many steps "
                                 "(pre-emptible schedulers; resume with --resume)")
    ] = None,
) -> None:
    """Train MedVersa from a config or recipe; runs unchanged under ``torchrun`` (DDP/FSDP)."""
    if (config is None) == (recipe is None):
        raise typer.BadParameter("give exactly one of --config FILE or --recipe NAME")
    try:
        cfg = TrainConfig.from_file(config if config else recipe_path(recipe))
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output:
        cfg.output_dir = str(output)
    if steps:
        cfg.steps = steps
        cfg.optimizer.warmup_steps = min(cfg.optimizer.warmup_steps, max(0, steps - 1))
    if data:
        for spec in cfg.datasets:
            spec.root = str(data)
    from .records import RecordError
    from .trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except (RecordError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    final = trainer.fit(resume=resume, stop_at=stop_at)
    if final is not None:
        typer.echo(f"checkpoint written to {final}")
