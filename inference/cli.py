"""``medversa model ...``: build, inspect, check and convert MedVersa models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Build, inspect, check and convert MedVersa models.", no_args_is_help=True)

LOGGER = logging.getLogger(__name__)


@model_app.command("presets")
def presets() -> None:
    """List the named model presets."""
    from .presets import create_config, list_presets

    for name in list_presets():
        c = create_config(name)
        typer.echo(f"{name}\tLLM {c.llm.num_hidden_layers}x{c.llm.hidden_size}\tSwin dim {c.encoder_2d.embed_dim}"
                   f"\t3D base {c.encoder_3d.base_channels}\tvocab {c.llm.vocab_size}")


@model_app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="Preset name, checkpoint folder, or 'bundled'")] = "bundled",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Parameter counts per module, and for a checkpoint the tasks and context it declares.

    The node runs only the tasks a checkpoint declares; a preset (random weights) declares all.
    """
    import torch

    from .bundled import BUNDLED_CHECKPOINT
    from .checkpoint import CONFIG_FILE, read_meta
    from .declaration import Declaration
    from .model import MedVersaModel
    from .model_config import MedVersaConfig
    from .presets import create_config
    from .tasks import MAX_VIEWS

    folder = BUNDLED_CHECKPOINT if name == "bundled" else Path(name)
    if folder.is_dir():
        try:
            meta = read_meta(folder)
        except (FileNotFoundError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from None
        config = MedVersaConfig.from_json(folder / CONFIG_FILE)
        declaration = Declaration.from_meta(meta)
    else:
        try:
            config = create_config(name)
        except (KeyError, ValueError) as exc:
            raise typer.BadParameter(f"{name!r} is neither a preset nor a checkpoint folder ({exc})") from None
        meta, declaration = {}, Declaration()
    with torch.device("meta"):
        model = MedVersaModel(config)
    counts = {n: sum(p.numel() for p in child.parameters()) for n, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    declared = declaration.to_meta()
    if json_out:
        typer.echo(json.dumps({"name": name, "preset": config.name, "parameters": counts, "declaration": declared,
                               "weights_sha256": meta.get("weights_sha256"), "config": config.to_dict()}, indent=2))
        return
    typer.echo(f"model {name} (preset {config.name})")
    for n, count in counts.items():
        typer.echo(f"  {n:<16}{count:>16,}")
    typer.echo("declared tasks (the node runs no others on it):")
    for task in declaration.tasks:
        typer.echo(f"  {task.value}")
    fields = declared.get("context_fields", "every field, every modality")
    typer.echo(f"clinical context fields: {fields}")
    typer.echo(f"prior date/description in comparison prompts: {'yes' if declaration.prior_details else 'no'}")
    views = declaration.views_per_request or f"up to {MAX_VIEWS}"
    typer.echo(f"chest views per report/classification request: {views}")


@model_app.command("config")
def show_config(preset: Annotated[str, typer.Argument(help="Preset name")] = "tiny") -> None:
    """Print a preset's config as JSON (the format of a checkpoint's config.json)."""
    from .presets import create_config

    typer.echo(create_config(preset).to_json())


@model_app.command("check-official")
def check_official(
    tsv: Annotated[Path, typer.Argument(help="medversa-official-state-dict.tsv", exists=True, dir_okay=False)],
) -> None:
    """Map every published key onto medversa-7b (built on the meta device) and compare shapes."""
    import torch

    from .model import MedVersaModel
    from .official import check_mapping, read_key_list
    from .presets import create_config

    config = create_config("medversa-7b")
    with torch.device("meta"):
        model = MedVersaModel(config)
    report = check_mapping(model, read_key_list(tsv), config.lora.target_modules)
    typer.echo(f"mapped {report.mapped}/{report.total} keys")
    if not report.ok:
        typer.echo(report.errors(), err=True)
        raise typer.Exit(1)


@model_app.command("check-equivalence")
def check_equivalence(
    folder: Annotated[Path, typer.Argument(help="The tiny-official fixture folder", exists=True, file_okay=False)],
) -> None:
    """Reproduce the published implementation's outputs on the tiny-official fixture."""
    from .equivalence import format_report, run_equivalence

    results = run_equivalence(folder)
    typer.echo(format_report(results))
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@model_app.command("init")
def init(
    preset: Annotated[str, typer.Argument(help="Preset name")],
    out: Annotated[Path, typer.Argument(help="Checkpoint folder to write")],
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    dtype: Annotated[str | None, typer.Option(help="Store floats as float16/bfloat16")] = None,
) -> None:
    """Write a randomly initialised checkpoint of a preset (for tests and demos)."""
    import torch

    from .checkpoint import build_model, save_checkpoint

    torch.manual_seed(seed)
    model, tokenizer = build_model(preset)
    save_checkpoint(model, tokenizer, out, dtype=dtype, extra={"note": "random weights; not a trained model"})
    typer.echo(f"wrote {out}")


@model_app.command("convert-official")
def convert_official_cmd(
    weights: Annotated[Path, typer.Argument(help="Published pytorch_model.bin", exists=True, dir_okay=False)],
    tokenizer: Annotated[Path, typer.Argument(help="Local Llama-2 tokenizer folder", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Argument(help="Checkpoint folder to write")],
) -> None:
    """Convert the published MedVersa checkpoint into our checkpoint folder (strict)."""
    from .checkpoint import convert_official

    convert_official(weights, tokenizer, out)
    typer.echo(f"wrote {out}")
