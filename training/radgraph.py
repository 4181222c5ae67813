"""RadGraph F1: overlap of the clinical entities and relations RadGraph finds in two reports.

RadGraph (Jain et al. 2021) annotates a report with entities (``tokens``, a label such
as ``ANAT-DP`` or ``OBS-DP``) and typed relations between them (``modify``,
``located_at``, ``suggestive_of``). The score per report pair is the one
CXR-Report-Metric calls ``radgraph_combined`` and RadCliQ uses: the mean of the F1 of
the two entity sets (tokens, label) and the F1 of the two relation sets
((tokens, label) of source, of target, relation type); F1 is 0 when either set is
empty and nothing matches, as in that code.

Annotations come in RadGraph's JSON layout (its dataset files and the output of the
``radgraph`` package): one object per report with ``text`` and ``entities``, each
entity ``{"tokens", "label", "start_ix", "end_ix", "relations": [[type, target_id], ...]}``.
The RadGraph model runs through the ``radgraph`` package on a local model folder, in
an environment of its own because that package's bundled AllenNLP code calls
tokenizer methods (``encode_plus``) that transformers 5, which this project pins, no
longer has: :class:`RadGraphProcess` runs :mod:`.radgraph_annotate` with that
environment's Python. :class:`AnnotationFile` reads annotations written earlier
(matched to reports by text).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

Entity = tuple[str, str]
Relation = tuple[Entity, Entity, str]
Annotation = Mapping[str, Any]


class Annotator(Protocol):
    """Something that gives each report its RadGraph annotation."""

    def annotate(self, texts: Sequence[str]) -> list[Annotation]: ...


def _tokens(entity: Mapping[str, Any]) -> str:
    tokens = entity.get("tokens", "")
    return " ".join(tokens) if isinstance(tokens, list) else str(tokens)


def entity_set(annotation: Annotation) -> set[Entity]:
    return {(_tokens(e), str(e.get("label", ""))) for e in (annotation.get("entities") or {}).values()}


def relation_set(annotation: Annotation) -> set[Relation]:
    entities = annotation.get("entities") or {}
    out: set[Relation] = set()
    for entity in entities.values():
        source = (_tokens(entity), str(entity.get("label", "")))
        for kind, target_id in entity.get("relations") or []:
            target = entities.get(str(target_id))
            if target is not None:
                out.add((source, (_tokens(target), str(target.get("label", ""))), str(kind)))
    return out


def set_f1(truth: set, predicted: set) -> float:
    matched = len(truth & predicted)
    precision = matched / len(predicted) if predicted else 0.0
    recall = matched / len(truth) if truth else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def radgraph_f1(truth: Annotation, predicted: Annotation) -> float:
    """Mean of entity F1 and relation F1 (CXR-Report-Metric's ``radgraph_combined``)."""
    return 0.5 * (set_f1(entity_set(truth), entity_set(predicted))
                  + set_f1(relation_set(truth), relation_set(predicted)))


def text_key(text: str) -> str:
    """Reports are matched to annotations by their text with runs of white space folded."""
    return " ".join(text.split())


class AnnotationFile:
    """RadGraph annotations read from a JSON file (RadGraph's layout, every object with ``text``).

    The file is either one object of annotations (keyed by anything, as RadGraph writes
    them) or a list of annotations. A report with no annotation is an error naming it,
    never a silent zero.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read RadGraph annotations {path}: {exc}") from exc
        items: Iterable[Any] = data.values() if isinstance(data, dict) else data
        self.path = path
        self.by_text: dict[str, Annotation] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "text" not in item or not isinstance(item.get("entities", {}), dict):
                raise ValueError(f"{path}: annotation {i} has no 'text' or its 'entities' is not an object")
            self.by_text[text_key(str(item["text"]))] = item

    def annotate(self, texts: Sequence[str]) -> list[Annotation]:
        missing = [t for t in texts if text_key(t) not in self.by_text and text_key(t)]
        if missing:
            raise ValueError(f"{self.path} has no RadGraph annotation for {len(missing)} report(s), "
                             f"e.g. {missing[0][:80]!r}")
        return [self.by_text.get(text_key(t), {"text": t, "entities": {}}) for t in texts]


class RadGraphProcess:
    """The RadGraph model in a local folder, run by :mod:`.radgraph_annotate` under another Python.

    ``python`` is the interpreter of an environment with the ``radgraph`` package and
    transformers < 5 (see :mod:`.radgraph_annotate`); ``model`` an unpacked model of that
    package, in a folder named as it names its models (``radgraph``, ``radgraph-xl``).
    """

    SCRIPT = Path(__file__).with_name("radgraph_annotate.py")

    def __init__(self, model: str | Path, python: str | Path, timeout_s: float = 3600.0) -> None:
        self.model, self.python, self.timeout_s = Path(model), str(python), timeout_s
        if not (self.model / "config.json").is_file() or not (self.model / "weights.th").is_file():
            raise ValueError(f"RadGraph model folder {self.model} needs config.json and weights.th "
                             "(an unpacked model of the radgraph package)")
        if not Path(self.python).is_file():
            raise ValueError(f"no Python interpreter at {self.python} for RadGraph (an environment with the "
                             "radgraph package and transformers<5)")

    def annotate(self, texts: Sequence[str]) -> list[Annotation]:
        unique = [t for t in dict.fromkeys(texts) if text_key(t)]  # each distinct report runs once
        if not unique:
            return [{"text": t, "entities": {}} for t in texts]
        with tempfile.TemporaryDirectory(prefix="medversa-radgraph-") as tmp:
            reports, out = Path(tmp) / "reports.jsonl", Path(tmp) / "radgraph.json"
            reports.write_text("".join(json.dumps({"output": t}) + "\n" for t in unique), encoding="utf-8")
            run = subprocess.run([self.python, str(self.SCRIPT), str(reports), "--model", str(self.model),
                                  "--out", str(out)], capture_output=True, text=True, timeout=self.timeout_s)
            if run.returncode != 0:
                raise ValueError(f"RadGraph ({self.python}) failed: {run.stderr.strip()[-500:]}")
            return AnnotationFile(out).annotate(texts)


class RadGraphF1:
    """Per-report RadGraph F1 (a :class:`~.report_metric.TextMetric`)."""

    name = "radgraph"

    def __init__(self, annotator: Annotator) -> None:
        self.annotator = annotator

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
        both = self.annotator.annotate(list(candidates) + list(references))
        cands, refs = both[:len(candidates)], both[len(candidates):]
        return np.array([radgraph_f1(r, c) for c, r in zip(cands, refs, strict=False)], dtype=float)
