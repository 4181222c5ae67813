"""Node commands: ``medversa infer`` (offline) — ``serve``, ``worker``, ``status``, ``retry`` come with issue 4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medversa.inference import Task


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
    ask: Annotated[str | None, typer.Option("--ask", help="A question about the first image (VQA)")] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="X0,Y0,X1,Y1: describe this region of the first image")
    ] = None,
    prior: Annotated[
        list[Path] | None, typer.Option("--prior", help="DICOM of an earlier study (longitudinal comparison)")
    ] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Run only these tasks (repeatable)")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Model checkpoint folder")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Model preset with random weights (testing)")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda")] = None,
    context: Annotated[str, typer.Option("--context", help="Clinical context for report generation")] = "",
    no_overlays: Annotated[bool, typer.Option("--no-overlays", help="Write no presentation states")] = False,
    no_burned_in: Annotated[bool, typer.Option("--no-burned-in", help="Write no burned-in result images")] = False,
    key_objects: Annotated[bool, typer.Option("--key-objects", help="Also write a Key Object Selection")] = False,
    org_root: Annotated[str | None, typer.Option("--org-root", help="Organisation UID root for new UIDs")] = None,
) -> None:
    """Read DICOM inputs, run the tasks that fit each study, write SR, SEG and overlays to --out.

    Inputs that cannot be used are skipped with a one-line note each; the exit status is 1 when
    no study was analysed (a study of images the node leaves out, a decubitus film, still gets the
    SR that says so, as the node would send it).
    """
    from medversa.dicom_mapping import StudyOptions
    from medversa.inference import load_analyzer

    from .infer import algorithm_for, run_infer

    try:
        tasks = tuple(Task(t) for t in task) if task else None
    except ValueError:
        raise typer.BadParameter(f"unknown task in {task}; known: {[t.value for t in Task]}") from None
    analyzer = load_analyzer(checkpoint, preset=preset, device=device)
    options = StudyOptions(
        algorithm=algorithm_for(analyzer, org_root), tasks=tasks, ask=ask, region=_region(region),
        clinical_context=context, presentation_states=not no_overlays, burned_in=not no_burned_in,
        key_objects=key_objects, context_fields=analyzer.declaration.context_fields,
        declared_tasks=analyzer.declaration.tasks, prior_details=analyzer.declaration.prior_details,
        views_per_request=analyzer.declaration.views_per_request,
    )
    written, messages, analysed = run_infer(list(inputs), out, analyzer, options, list(prior or []))
    for message in messages:
        typer.echo("note: " + " ".join(message.splitlines()), err=True)  # one line per note
    for kind, path, ds in written:
        typer.echo(f"{kind}\t{path}\t{ds.get('SeriesDescription', '')}")
    if not analysed:
        typer.echo("no results: no study was analysed" if written else "no result objects written", err=True)
        raise typer.Exit(1)


def _settings(config: Path | None, **flags):
    from .settings import load_settings

    try:
        return load_settings(config, **flags)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def serve(
    config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Our AE title")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DICOM port")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Spool, results and database folder")] = None,
    idle_seconds: Annotated[
        float | None, typer.Option("--idle-seconds", help="Study complete after this idle time")
    ] = None,
    destination: Annotated[
        list[str] | None, typer.Option("--destination", help="AE@HOST:PORT to send results to (repeatable)")
    ] = None,
    pacs: Annotated[str | None, typer.Option("--pacs", help="AE@HOST:PORT queried for completeness and priors")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", help="Metrics/health port (0: any free port)")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Model preset with random weights (testing)")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Model checkpoint folder")] = None,
) -> None:
    """Run the node: SCP, study completion, queue, embedded worker (default), exports, HTTP."""
    from .logs import configure
    from .service import Node, PortUnavailable
    from .settings import Peer

    flags = {"scp.ae_title": ae_title, "scp.port": port, "data_dir": data_dir, "idle_seconds": idle_seconds,
             "http.port": http_port, "model.preset": preset, "model.checkpoint": checkpoint,
             "pacs.peer": pacs}
    if destination:
        try:
            flags["export.destinations"] = [Peer.parse(d).model_dump() for d in destination]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    settings = _settings(config, **flags)
    configure(settings.logging.level, settings.logging.json_format)
    import logging

    log = logging.getLogger("medversa.node")
    if not (settings.model.checkpoint or settings.model.preset):
        from medversa.inference import BUNDLED_CHECKPOINT

        if not (BUNDLED_CHECKPOINT / "medversa-checkpoint.json").is_file():
            log.warning("no bundled demo model yet: the node runs the 'tiny' preset with RANDOM weights "
                        "(results are meaningless; for testing the plumbing only)")
        else:
            log.warning("running the bundled DEMO model (%s): a small demonstration model trained on public "
                        "research data, NOT for clinical use; configure model.checkpoint for a real one",
                        BUNDLED_CHECKPOINT / "MODEL_CARD.md")
    log.info("medversa-node: AE %s port %d, data %s, %s broker", settings.scp.ae_title, settings.scp.port,
             settings.data_dir, "embedded SQLite" if settings.embedded else "external")
    try:
        Node(settings, config).run()
    except PortUnavailable as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None


def ask(
    study: Annotated[str, typer.Argument(help="Study Instance UID (on the node, or on the configured PACS)")],
    question: Annotated[str, typer.Argument(help='The question, e.g. "Is there a pneumothorax?" ("" with --region: '
                                                 "describe the region)")],
    region: Annotated[str | None, typer.Option("--region", help="X0,Y0,X1,Y1 in pixels of the image: describe "
                                                                    "this region (region captioning)")] = None,
    image: Annotated[str | None, typer.Option(
        "--image", help="SOP Instance UID of the image (default: the study's first chest radiograph or skin image)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="The node's data folder")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Ask the model about a study's image now (VQA, region captioning); the answer SR goes to the PACS.

    Runs in this process on the node's configuration and job store: the image is read from the spool
    or retrieved from the PACS, the answer printed and exported like a reader's annotation's answer.
    Exit status 1 when nothing was answered.
    """
    import json

    from .ask_command import ask_command
    from .logs import configure
    from .node_context import NodeContext

    settings = _settings(config, data_dir=data_dir)
    configure(settings.logging.level, settings.logging.json_format)
    try:
        outcome = ask_command(NodeContext(settings), study, question, _region(region), image)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if json_out:
        typer.echo(json.dumps({"job": outcome.job_id, "state": outcome.state, "error": outcome.error,
                               "notes": outcome.notes, "sr": str(outcome.sr_path or ""),
                               "answers": outcome.answers}, indent=2))
    else:
        for entry in outcome.answers:
            if entry.get("question"):
                typer.echo(f"question: {entry['question']}")
                typer.echo(f"answer: {entry.get('answer', '')}")
            if entry.get("caption"):
                xs, ys = entry["graphic_data"][0::2], entry["graphic_data"][1::2]
                typer.echo(f"region {min(xs):g},{min(ys):g},{max(xs):g},{max(ys):g}: {entry['caption']}")
            if not entry.get("answer") and not entry.get("caption"):
                typer.echo(f"not answered: {entry.get('comment', '')}")
        typer.echo(f"job {outcome.job_id} {outcome.state}" + (f": {outcome.error}" if outcome.error else "")
                   + (f"; answer SR {outcome.sr_path}" if outcome.sr_path else ""))
    if outcome.sr_path is None:
        raise typer.Exit(1)


def worker(
    config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
    queues: Annotated[str | None, typer.Option("--queues", help="Comma-separated queues to consume")] = None,
) -> None:
    """A Celery worker (production: on each GPU host, against the Redis broker)."""
    from .logs import configure
    from .service import run_worker

    settings = _settings(config)
    configure(settings.logging.level, settings.logging.json_format)
    run_worker(settings, (queues or settings.model.queue).split(","))


def status(config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
           data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
           limit: Annotated[int, typer.Option(help="Jobs to list")] = 20) -> None:
    """Jobs and exports at a glance."""
    from sqlalchemy import func, select

    from .job_store import Export, Job, Store, Study

    settings = _settings(config, data_dir=data_dir)
    store = Store(settings.db_url)
    with store.session() as s:
        studies = s.scalar(select(func.count()).select_from(Study)) or 0
        typer.echo(f"studies: {studies}")
        for state, count in s.execute(select(Job.state, func.count()).group_by(Job.state)):
            typer.echo(f"jobs {state.value}: {count}")
        for state, count in s.execute(select(Export.state, func.count()).group_by(Export.state)):
            typer.echo(f"exports {state.value}: {count}")
        typer.echo("recent jobs:")
        for job in s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)):
            exports = ", ".join(f"{e.kind}->{e.destination}:{e.state.value}" for e in job.exports) or "-"
            typer.echo(f"  job {job.id} v{job.version} {job.state.value} study {job.study.study_instance_uid} "
                       f"tasks {len(job.tasks)} exports [{exports}]{' error: ' + job.error if job.error else ''}")


def retry(job: Annotated[int, typer.Argument(help="Job id (see medversa status)")],
          config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
          data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None) -> None:
    """Send a job's dead-lettered (or pending) exports again, now; a FAILED job is queued again."""
    from .jobs import deliver_claimed, requeue_failed_job, retry_job_exports
    from .node_context import NodeContext

    settings = _settings(config, data_dir=data_dir)
    ctx = NodeContext(settings)
    try:
        if requeue_failed_job(ctx, job):
            typer.echo(f"job {job}: FAILED job queued again with {settings.jobs.max_attempts} fresh attempt(s); "
                       "a running `medversa serve` picks it up")
            return
        revived = retry_job_exports(ctx, job)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    delivered = deliver_claimed(ctx, revived)
    typer.echo(f"job {job}: {len(revived)} export(s) retried, {delivered} delivered")
    if delivered < len(revived):
        raise typer.Exit(1)


config_app = typer.Typer(help="Configuration.", no_args_is_help=True)


@config_app.command("example")
def config_example() -> None:
    """Print a documented example configuration."""
    typer.echo((Path(__file__).parent / "example_config.yaml").read_text(), nl=False)


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="YAML configuration file")]) -> None:
    """Validate a configuration file (with environment overrides) and print the result."""
    import re

    import yaml as _yaml

    settings = _settings(config)
    data = settings.model_dump(mode="json")
    for key in ("broker_url", "database_url"):
        if data.get(key):
            data[key] = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", data[key])  # never print a password
    typer.echo(_yaml.safe_dump(data, sort_keys=False), nl=False)
