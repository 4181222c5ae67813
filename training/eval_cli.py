"""``medversa eval``: score a model on a dataset split with the paper's metrics.

stdout carries the result only (one JSON object with ``--json``, else the
Markdown table); logs, including the list of skipped metrics, go to stderr.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

LOGGER = logging.getLogger(__name__)


def eval_command(
    data: Annotated[Path, typer.Option(help="Dataset folder (a medinterp-mini folder by default)",
                                       exists=True, file_okay=False)],
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: the bundled model)",
                                                       exists=True, file_okay=False)] = None,
    preset: Annotated[str | None, typer.Option(help="A preset with RANDOM weights (tests)")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset reader name")] = "medinterp-mini",
    split: Annotated[str, typer.Option(help="Split to score (evaluation only; never trained on)")] = "holdout",
    limit: Annotated[int | None, typer.Option(help="Score the first N records of each task", min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout")] = False,
    markdown: Annotated[Path | None, typer.Option(help="Also write the Markdown table to this file")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw the scores with their 95% CIs to this PNG")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-case outputs as JSON lines")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per analyzer call", min=1)] = 16,
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap generated tokens per answer", min=1)] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples (paper: 1,000)", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if present)")] = None,
    bertscore: Annotated[Path | None, typer.Option(help="Local encoder folder for BERTScore",
                                                      exists=True, file_okay=False)] = None,
    bertscore_layer: Annotated[int | None, typer.Option(help="BERTScore layer (default: last)")] = None,
    chexbert: Annotated[Path | None, typer.Option(help="Folder with chexbert.pth and its BERT config/tokenizer",
                                                     exists=True, file_okay=False)] = None,
    bertscore_baseline: Annotated[Path | None, typer.Option(
        help="bert-score rescale file (LAYER,P,R,F) for --bertscore; RadCliQ needs distilroberta-base.tsv",
        exists=True, dir_okay=False)] = None,
    radgraph: Annotated[Path | None, typer.Option(
        help="Unpacked RadGraph model of the radgraph package (folder named radgraph, radgraph-xl...)",
        exists=True, file_okay=False)] = None,
    radgraph_python: Annotated[Path | None, typer.Option(
        help="Python of an environment with the radgraph package and transformers<5",
        envvar="MEDVERSA_RADGRAPH_PYTHON", exists=True, dir_okay=False)] = None,
    baseline: Annotated[bool, typer.Option(
        help="Score constant baselines: for reports the training text with the best training-split BLEU-4, "
             "for VQA and region captions each question's most frequent training answer")] = True,
    training_ct: Annotated[bool, typer.Option(
        help="Also score Dice per organ on the training split's CT volume(s) (medinterp-mini has no held-out CT; "
             "keys say 'training_ct')")] = True,
    confusion_probes: Annotated[bool, typer.Option(
        help="Also ask each radiograph the report sections it has no reference for, scored for task confusion "
             "only (keys task/all/confusion)")] = True,
    radgraph_annotations: Annotated[Path | None, typer.Option(
        help="RadGraph annotations (JSON, RadGraph's layout) of the generated and reference reports "
             "(instead of --radgraph)",
        exists=True, dir_okay=False)] = None,
) -> None:
    """Score a model on a dataset split: Dice, IoU, F1, BLEU-4, VQA/caption accuracy, task confusion (95% CIs)."""
    from medversa.inference import load_analyzer, model_identity

    from .evaluate import (
        SKIPPED,
        constant_baselines,
        evaluate,
        majority_answers,
        read_records,
        render_markdown,
        training_volumes,
    )
    from .text_metrics import load_text_metrics

    if checkpoint and preset:
        raise typer.BadParameter("give --checkpoint or --preset, not both")
    try:
        records = read_records(data, split, dataset)
    except ValueError as exc:  # RecordError is a ValueError naming the file and record
        raise typer.BadParameter(str(exc)) from exc
    try:
        text_metrics, skipped = load_text_metrics(bertscore, bertscore_layer, chexbert, device,
                                                  bertscore_baseline=bertscore_baseline, radgraph=radgraph,
                                                  radgraph_python=radgraph_python,
                                                  radgraph_annotations=radgraph_annotations)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    analyzer = load_analyzer(checkpoint, preset=preset, device=device)
    if max_new_tokens:
        analyzer.max_new_tokens = max_new_tokens
    outputs: list[dict] | None = [] if predictions else None
    train_records = []
    if (baseline or training_ct) and split != "train":
        try:  # the constant baseline and the training CT come from the training split
            train_records = read_records(data, "train", dataset)
        except ValueError as exc:
            skipped["constant_baseline"] = skipped["training_ct"] = f"the train split could not be read ({exc})"
    try:
        results = evaluate(analyzer, records, limit=limit, batch_size=batch_size, resamples=resamples, seed=seed,
                           text_metrics=text_metrics, skipped=skipped, predictions=outputs,
                           baselines=constant_baselines(train_records) if baseline else None,
                           majority=majority_answers(train_records) if baseline else None,
                           confusion_probes=confusion_probes)
        if training_ct and train_records:
            results.update(training_volumes(analyzer, train_records, resamples=resamples, seed=seed))
    except ValueError as exc:  # e.g. a report the RadGraph annotation file does not cover
        raise typer.BadParameter(str(exc)) from exc
    skipped = results.pop(SKIPPED)
    if skipped:
        LOGGER.warning("skipped metrics: %s", "; ".join(f"{m} ({why})" for m, why in skipped.items()))
    model = model_identity(analyzer)
    if markdown:
        markdown.write_text(render_markdown({**results, SKIPPED: skipped}, f"{model} on {dataset} {split}"),
                            encoding="utf-8")
    if predictions and outputs is not None:
        predictions.write_text("".join(json.dumps(o) + "\n" for o in outputs), encoding="utf-8")
    if plot:
        from .plots import plot_scores

        plot_scores(results, plot, f"{model} on {dataset} {split}")
    LOGGER.info("scored %s on %s %s (limit %s, %d resamples, seed %d)", model, dataset, split, limit, resamples, seed)
    if json_out:
        # Exactly one object keyed task/class/metric; what was skipped is on stderr (above).
        typer.echo(json.dumps(results))
    else:
        typer.echo(render_markdown({**results, SKIPPED: skipped}), nl=False)
