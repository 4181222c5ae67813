"""``medversa bench ...``: the benchmarks' command group, registered by the CLI root (``medversa.cli``).

Each command imports its benchmark when it runs, so ``medversa --help`` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)


@bench_app.command("inference")
def bench_inference(
    preset: Annotated[str, typer.Option(help="tiny, demo or medversa-7b")] = "tiny",
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if present)")] = None,
    batch: Annotated[list[int], typer.Option(help="Decode batch sizes (repeatable)")] = [1],  # noqa: B006 - typer's default
    lengths: Annotated[str, typer.Option(help="Comma-separated output lengths")] = "32,128,256",
    skip_tasks: Annotated[bool, typer.Option(help="Only measure decoding")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Per-task latency and tokens/s; decode cost per token at several output lengths."""
    from .inference_speed import run_benchmark

    report = run_benchmark(preset, device, tuple(batch), tuple(int(x) for x in lengths.split(",")), not skip_tasks)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['preset']} on {report['device']} ({report['dtype']}, {report['parameters']:,} parameters)")
    for task, fig in report.get("tasks", {}).items():
        typer.echo(f"  {task:<32}{fig['latency_s']:>8.3f} s {fig['generated_tokens']:>5} tok "
                   f"{fig['tokens_per_s']:>8.1f} tok/s")
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
    from .node_ingest import bench_ingest

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
    mode: Annotated[list[str], typer.Option(help="embedded and/or redis (repeatable)")] = [  # noqa: B006 - typer's default
        "embedded", "redis"],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Seconds from the last C-STORE of a study to its SR stored in Orthanc (p50, p95)."""
    from .node_latency import bench_e2e

    report = bench_e2e(studies, idle_seconds, preset, tuple(mode))
    typer.echo(json.dumps(report, indent=2) if json_out else
               "\n".join(f"{m}: {report[m]}" for m in mode))


@bench_app.command("load")
def bench_load(
    associations: Annotated[int, typer.Option(help="Concurrent associations sending")] = 20,
    instances: Annotated[int, typer.Option(help="Instances to send in all")] = 2000,
    studies: Annotated[int, typer.Option(help="Studies the instances belong to")] = 100,
    size: Annotated[int, typer.Option(help="Image side in pixels (CR, 16-bit)")] = 64,
    idle_seconds: Annotated[float, typer.Option(help="The node's study idle time")] = 5.0,
    preset: Annotated[str, typer.Option(help="Model preset (random weights, planted answers)")] = "tiny",
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="Tasks per study (repeatable; default report_impression)")] = None,
    timeout_s: Annotated[float, typer.Option(help="Longest wait for every study to be processed")] = 3600.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Many associations at once against `serve`: every study processed once, no instance lost, peak memory."""
    from medversa.inference import Task

    from .node_load import bench_load as run

    try:
        tasks = tuple(Task(t).value for t in task) if task else ("report_impression",)
    except ValueError:
        raise typer.BadParameter(f"unknown task in {task}; known: {[t.value for t in Task]}") from None
    report = run(associations, instances, studies, size, idle_seconds, preset, tasks, timeout_s)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        rss = report["peak_rss_mb"]
        typer.echo(f"{report['associations']} associations: {report['instances_sent']} instances sent, "
                   f"{report['acknowledged']} acknowledged, {report['processed']} processed, {report['lost']} lost")
        typer.echo(f"studies: {report['studies_processed']} of {report['studies']} processed, "
                   f"{report['duplicate_jobs']} duplicate job(s), {report['duplicate_srs']} duplicate SR(s), "
                   f"{report['failed_jobs']} failed job(s)")
        typer.echo(f"wall time {report['wall_s']} s (sending {report['send_s']} s); "
                   f"peak RSS serve {rss['serve']} MB, worker {rss['worker']} MB")
    ok = (report["lost"] == 0 and report["studies_processed"] == report["studies"]
          and not report["duplicate_jobs"] and not report["duplicate_srs"])
    if not ok:
        raise typer.Exit(1)


@bench_app.command("train")
def bench_train(
    preset: Annotated[str, typer.Option("--preset", help="demo, tiny or medversa-7b (random weights)")] = "demo",
    data: Annotated[Path | None, typer.Option(
        "--data", help="medinterp-mini folder (default: synthetic samples)")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps per task (after one warm-up step)")] = 3,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if present)")] = None,
    bf16: Annotated[bool | None, typer.Option(
        "--bf16/--no-bf16", help="bf16 autocast (default: on for cuda)")] = None,
    lora_only: Annotated[bool | None, typer.Option(
        "--lora-only/--train-llm-base", help="Train only LoRA in the LLM (default: on for medversa-7b)")] = None,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Training samples/s per task on this machine (random weights); peak GPU memory on CUDA."""
    from .training_speed import bench_training

    result = bench_training(preset, data, steps, device=device, bf16=bf16, lora_only=lora_only,
                            gradient_checkpointing=gradient_checkpointing)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for key, row in result["tasks"].items():
            typer.echo(f"{key:45s} {row['samples_per_s']:8.2f} samples/s  (batch {row['batch_size']})")
