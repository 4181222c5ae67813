"""Node commands: ``medversa infer`` (offline) — ``serve``, ``worker``, ``status``, ``retry`` come with issue 4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medversa.inference.tasks import Task


def _region(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected X0,Y0,X1,Y1 in pixels of the first image, e.g. 100,120,300,400") from None
    return (x0, y0, x1, y1)


def infer(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files or folders (one or more studies)")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the result objects")],
    ask: Annotated[Optional[str], typer.Option("--ask", help="A question about the first image (VQA)")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="X0,Y0,X1,Y1: describe this region of the first image")] = None,
    prior: Annotated[Optional[list[Path]], typer.Option("--prior", help="DICOM of an earlier study (longitudinal comparison)")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Run only these tasks (repeatable)")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Model checkpoint folder")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Model preset with random weights (testing)")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda")] = None,
    context: Annotated[str, typer.Option("--context", help="Clinical context for report generation")] = "",
    no_overlays: Annotated[bool, typer.Option("--no-overlays", help="Write no presentation states")] = False,
    no_burned_in: Annotated[bool, typer.Option("--no-burned-in", help="Write no burned-in result images")] = False,
    key_objects: Annotated[bool, typer.Option("--key-objects", help="Also write a Key Object Selection")] = False,
    org_root: Annotated[Optional[str], typer.Option("--org-root", help="Organisation UID root for new UIDs")] = None,
) -> None:
    """Read DICOM inputs, run the tasks that fit each study, write SR, SEG and overlays to --out."""
    from medversa.inference.bundled import load_default_analyzer

    from .infer import algorithm_for, run_infer
    from .pipeline import PipelineOptions

    try:
        tasks = tuple(Task(t) for t in task) if task else None
    except ValueError:
        raise typer.BadParameter(f"unknown task in {task}; known: {[t.value for t in Task]}") from None
    analyzer = load_default_analyzer(checkpoint, preset, device)
    options = PipelineOptions(
        algorithm=algorithm_for(analyzer, org_root), tasks=tasks, ask=ask, region=_region(region),
        clinical_context=context, presentation_states=not no_overlays, burned_in=not no_burned_in,
        key_objects=key_objects,
    )
    written, messages = run_infer(list(inputs), out, analyzer, options, list(prior or []))
    for message in messages:
        typer.echo(f"note: {message}", err=True)
    for kind, path, ds in written:
        typer.echo(f"{kind}\t{path}\t{ds.get('SeriesDescription', '')}")
    if not written:
        typer.echo("no result objects written", err=True)
