"""Annotate generated and reference reports with a local RadGraph model, for ``medversa eval``.

RadGraph F1 and RadCliQ need RadGraph's entities and relations for every generated
report and its reference. The ``radgraph`` package runs the model, but its bundled
AllenNLP code needs transformers < 5 while medversa-node pins transformers 5, so this
file runs as a script in an environment of its own and imports nothing from medversa:

    python -m venv radgraph-env && radgraph-env/bin/pip install radgraph "transformers<5" torch
    medversa eval --data DIR --radgraph MODEL_DIR --radgraph-python radgraph-env/bin/python ...

``eval`` then runs this script on its reports itself. By hand, on the JSON lines of
``medversa eval --predictions``:

    radgraph-env/bin/python radgraph_annotate.py preds.jsonl --model MODEL_DIR --out radgraph.json
    medversa eval --data DIR --radgraph-annotations radgraph.json ...  # same model, same outputs

``--model`` is an unpacked model of the package (``config.json``, ``vocabulary/``,
``weights.th``) in a folder named as the package names it (``radgraph``,
``radgraph-xl``); nothing is downloaded (the BERT its config names must be a local
folder or already in the Hugging Face cache). The output is a JSON list of RadGraph
annotations, each with its ``text``, one per distinct report text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def report_texts(prediction_lines: list[str]) -> list[str]:
    """Distinct generated and reference report texts of ``--predictions`` JSON lines, in order."""
    texts: dict[str, None] = {}
    for number, line in enumerate(prediction_lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from exc
        for key in ("output", "reference"):
            value = entry.get(key)
            if isinstance(value, str) and value.strip():
                texts[value] = None
    return list(texts)


def annotate(texts: list[str], model: Path, batch: int = 64) -> list[dict]:
    """RadGraph annotations of ``texts`` from the local model folder (each with its ``text``)."""
    if not (model / "config.json").is_file() or not (model / "weights.th").is_file():
        raise ValueError(f"{model} needs config.json and weights.th (an unpacked model of the radgraph package)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Run as a script, this file's folder leads sys.path, and medversa's own radgraph.py would shadow the package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import torch
    from radgraph import RadGraph

    runner = RadGraph(model_type=model.name, model_cache_dir=str(model.parent),
                      cuda=0 if torch.cuda.is_available() else -1)
    out: list[dict] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        found = runner(chunk)
        for i, text in enumerate(chunk):
            annotation = dict(found.get(str(i)) or {"entities": {}})
            annotation["text"] = text  # the key medversa matches reports by
            out.append(annotation)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="JSON lines written by medversa eval --predictions")
    parser.add_argument("--model", type=Path, required=True, help="unpacked RadGraph model folder")
    parser.add_argument("--out", type=Path, required=True, help="annotations JSON to write")
    args = parser.parse_args(argv)
    try:
        texts = report_texts(args.predictions.read_text(encoding="utf-8").splitlines())
        annotations = annotate(texts, args.model)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(annotations), encoding="utf-8")
    print(f"{len(annotations)} reports annotated -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
