"""``medversa model ...`` and ``medversa bench inference``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

model_app = typer.Typer(help="Build, inspect, check and convert MedVersa models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)

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
    from .config import MedVersaConfig
    from .declaration import Declaration
    from .model import MedVersaModel
    from .presets import create_config

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
    dtype: Annotated[Optional[str], typer.Option(help="Store floats as float16/bfloat16")] = None,
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


@bench_app.command("inference")
def bench_inference(
    preset: Annotated[str, typer.Option(help="tiny, demo or medversa-7b")] = "tiny",
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda if present)")] = None,
    batch: Annotated[list[int], typer.Option(help="Decode batch sizes (repeatable)")] = [1],
    lengths: Annotated[str, typer.Option(help="Comma-separated output lengths")] = "32,128,256",
    skip_tasks: Annotated[bool, typer.Option(help="Only measure decoding")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Per-task latency and tokens/s; decode cost per token at several output lengths."""
    from .bench import run_benchmark

    report = run_benchmark(preset, device, tuple(batch), tuple(int(x) for x in lengths.split(",")), not skip_tasks)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['preset']} on {report['device']} ({report['dtype']}, {report['parameters']:,} parameters)")
    for task, fig in report.get("tasks", {}).items():
        typer.echo(f"  {task:<32}{fig['latency_s']:>8.3f} s {fig['generated_tokens']:>5} tok {fig['tokens_per_s']:>8.1f} tok/s")
    for key, dec in report["decode"].items():
        typer.echo(f"  decode {key}: prefill {dec['prefill_s']} s, cost ratio {dec['cost_ratio_last_vs_first']}")
        for n, fig in dec.items():
            if isinstance(fig, dict):
                typer.echo(f"    {n:>5} new tokens: {fig['ms_per_token']:.3f} ms/token, {fig['tokens_per_s']} tok/s")


@bench_app.command("ingest")
def bench_ingest_cmd(
    instances: Annotated[int, typer.Option(help="Instances to send")] = 200,
    repeats: Annotated[int, typer.Option(help="Runs per receiver (best is reported)")] = 3,
    size: Annotated[int, typer.Option(help="Image side in pixels (16-bit)")] = 512,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Our SCP (durable spool) against dcmtk storescp: instances/s, MB/s, peak memory of serve."""
    from medversa.node.bench import bench_ingest

    report = bench_ingest(instances, repeats, size)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        b, o = report["storescp"], report["medversa_serve"]
        typer.echo(f"{report['instances']} instances, {report['megabytes']} MB")
        typer.echo(f"  storescp        {b['instances_per_s']:>8} inst/s {b['MB_per_s']:>8} MB/s")
        typer.echo(f"  medversa serve  {o['instances_per_s']:>8} inst/s {o['MB_per_s']:>8} MB/s "
                   f"(peak RSS {o['peak_rss_MB']} MB)  ratio {report['ratio_vs_storescp']}")
        e, w = report["pynetdicom_empty_handler"], report["spool_write"]
        typer.echo(f"  pynetdicom, empty handler {e['instances_per_s']:>8} inst/s  ratio {e['ratio_vs_storescp']}")
        typer.echo(f"  spool write {w['durable_ms']} ms durable vs {w['plain_ms']} ms plain per instance; "
                   f"best ratio any SCP that fsyncs could reach: {report['ceiling_ratio_if_durable']}")


@bench_app.command("e2e")
def bench_e2e_cmd(
    studies: Annotated[int, typer.Option(help="Chest studies to send (one after another)")] = 20,
    idle_seconds: Annotated[float, typer.Option(help="The node's study idle time")] = 2.0,
    preset: Annotated[str, typer.Option(help="Model preset (random weights, planted answers), "
                                        "or 'bundled' for the trained demo model decoding freely")] = "demo",
    mode: Annotated[list[str], typer.Option(help="embedded and/or redis (repeatable)")] = ["embedded", "redis"],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Seconds from the last C-STORE of a study to its SR stored in Orthanc (p50, p95)."""
    from medversa.node.bench import bench_e2e

    report = bench_e2e(studies, idle_seconds, preset, tuple(mode))
    typer.echo(json.dumps(report, indent=2) if json_out else
               "\n".join(f"{m}: {report[m]}" for m in mode))
