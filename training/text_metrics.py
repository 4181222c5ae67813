"""Model-based report metrics of the paper's Table 1, each from a local model folder.

The paper scores reports with BLEU-4, BERTScore, CheXbert, RadGraph and RadCliQ
(Results, "Radiology report generation"; refs. 23-27). BLEU-4 needs no model
(:mod:`.metrics`). The others need trained models that this package never
downloads, so each runs only when its local path is given:

- ``bertscore`` (Zhang et al. 2020): greedy cosine matching of contextual token
  embeddings, F1 per report, from any local Hugging Face encoder folder, computed
  as the ``bert-score`` package does (no idf; tests check the two agree, for RoBERTa
  against bert-score under transformers 4: under transformers 5, bert-score 0.3.13
  silently loses the leading space it gives RoBERTa's input, and RadCliQ was fitted
  with it). Raw
  scores unless a baseline file is given; ``layer`` defaults to the last hidden
  layer, while ``bert-score`` picks a tuned layer per model (e.g. 5 for
  distilroberta-base): pass it to match.
- ``chexbert``: CheXbert vector similarity, the cosine of the two reports' [CLS]
  embeddings from CheXbert's BERT (RadCliQ's ``semb_score``, CXR-Report-Metric).
  The folder holds the published ``chexbert.pth`` and the bert-base-uncased
  ``config.json`` and tokenizer files it was trained with.
- ``radgraph``: RadGraph F1 (:mod:`.radgraph`) from a local RadGraph model, run by the
  ``radgraph`` package in an environment of its own (``--radgraph-python``), or from a
  file of annotations that model wrote.
- ``radcliq``: RadCliQ-v1 (:mod:`.radcliq`) from the three above and BLEU-2, when
  all three are given and BERTScore is rescaled with its baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .radcliq import RadCliQ
from .radgraph import AnnotationFile, RadGraphF1, RadGraphProcess
from .report_metric import TextMetric

LOGGER = logging.getLogger(__name__)

MODEL_METRICS = ("bertscore", "chexbert", "radgraph", "radcliq")


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


#: Tokenizers that bert-score encodes with a leading space (byte-level BPE: GPT-2, RoBERTa...).
_PREFIX_SPACE_MODELS = {"roberta", "gpt2", "bart", "longformer"}


def read_baseline(path: str | Path, layer: int) -> float:
    """The F baseline of ``layer`` from a bert-score rescale file (``LAYER,P,R,F`` CSV)."""
    path = Path(path)
    try:
        rows = [line.split(",") for line in path.read_text(encoding="utf-8").split()]
    except OSError as exc:
        raise ValueError(f"cannot read the BERTScore baseline {path}: {exc}") from exc
    for row in rows[1:]:
        if len(row) == 4 and row[0].strip() == str(layer):
            return float(row[3])
    raise ValueError(f"{path} has no baseline for layer {layer} (expected bert-score's LAYER,P,R,F rows)")


class BertScore:
    """BERTScore F1 per report from a local encoder folder, computed as the bert-score package does.

    Greedy cosine matching of the candidate's and the reference's token embeddings at
    ``layer``: each token's best match is sought among all tokens of the other text,
    [CLS]/[SEP] included, and averaged over the text's own tokens without them (no
    idf). With ``baseline`` (bert-score's rescale value for this model and layer) the
    score is rescaled to ``(F - b) / (1 - b)``, as RadCliQ's BERTScore is.
    """

    name = "bertscore"

    def __init__(self, path: str | Path, layer: int | None = None, device: str | None = None,
                 batch_size: int = 16, baseline: float | None = None) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"bertscore model folder {path} does not exist")
        self.device = _device(device)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        extra = {"add_prefix_space": True} if config.model_type in _PREFIX_SPACE_MODELS else {}
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **extra)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        layers = self.model.config.num_hidden_layers
        self.layer = layers if layer is None else layer
        if not 0 <= self.layer <= layers:
            raise ValueError(f"bertscore layer must be in 0..{layers} for {path}, got {layer}")
        self.batch_size = batch_size
        self.baseline = baseline

    def _embed(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: unit-length embeddings of all its tokens and which of them are ordinary."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t.strip() for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt",
                                 return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask").bool()
            with torch.inference_mode():
                hidden = self.model(**enc.to(self.device), output_hidden_states=True).hidden_states[self.layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
            real = enc["attention_mask"].cpu().bool()
            for i, text in enumerate(chunk):
                ordinary = (~special[i])[real[i]].numpy()
                out.append((hidden[i][real[i]].numpy(), ordinary if text else np.zeros_like(ordinary)))
        return out

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
        scores = []
        for (c, c_ordinary), (r, r_ordinary) in zip(self._embed(candidates), self._embed(references), strict=True):
            if not c_ordinary.any() or not r_ordinary.any():
                f1 = 0.0
            else:
                sim = c @ r.T
                precision = float(sim.max(axis=1)[c_ordinary].mean())
                recall = float(sim.max(axis=0)[r_ordinary].mean())
                f1 = 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)
            scores.append(f1 if self.baseline is None else (f1 - self.baseline) / (1.0 - self.baseline))
        return np.array(scores, dtype=float)


class CheXbertSimilarity:
    """Cosine similarity of CheXbert [CLS] embeddings per report (see the module docstring)."""

    name = "chexbert"
    WEIGHTS = "chexbert.pth"

    def __init__(self, folder: str | Path, device: str | None = None, batch_size: int = 16) -> None:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        folder = Path(folder)
        weights = folder / self.WEIGHTS
        if not weights.is_file():
            raise ValueError(f"chexbert folder {folder} has no {self.WEIGHTS}")
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = BertModel(BertConfig.from_pretrained(folder, local_files_only=True))
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        state = checkpoint.get("model_state_dict", checkpoint)
        # The published checkpoint is a DataParallel bert_labeler: module.bert.* plus 14 linear heads.
        bert = {k.removeprefix("module.").removeprefix("bert."): v for k, v in state.items()
                if k.removeprefix("module.").startswith("bert.")}
        missing, unexpected = model.load_state_dict(bert, strict=False)
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit a BERT of {folder / 'config.json'}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=512, return_tensors="pt")
            with torch.inference_mode():
                cls = self.model(**enc.to(self.device)).last_hidden_state[:, 0]
            out.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
        if not candidates:
            return np.zeros(0)
        return np.sum(self._embed(candidates) * self._embed(references), axis=1).astype(float)


class RememberLast:
    """A metric that answers a repeated call on the same texts from its last result.

    ``evaluate`` asks each metric once per task and RadCliQ then asks its three parts for
    the same reports: with the parts wrapped, each model runs once per task.
    """

    def __init__(self, metric: TextMetric) -> None:
        self.metric = metric
        self.name = metric.name
        self._last: tuple[tuple, np.ndarray] | None = None

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        key = (tuple(candidates), tuple(references))
        if self._last is None or self._last[0] != key:
            self._last = (key, self.metric.score(candidates, references))
        return self._last[1]


def load_text_metrics(bertscore: str | Path | None = None, bertscore_layer: int | None = None,
                      chexbert: str | Path | None = None, device: str | None = None, *,
                      bertscore_baseline: str | Path | None = None, radgraph: str | Path | None = None,
                      radgraph_python: str | Path | None = None, radgraph_annotations: str | Path | None = None,
                      ) -> tuple[list[TextMetric], dict[str, str]]:
    """The model-based metrics whose local models are given, and ``{metric: reason}`` for the rest.

    RadCliQ-v1 runs when its three model-based features do: RadGraph, CheXbert, and
    BERTScore rescaled with a baseline (RadCliQ's is distilroberta-base at layer 5).
    """
    active: dict[str, TextMetric] = {}
    skipped: dict[str, str] = {}
    if bertscore:
        baseline = None
        if bertscore_baseline:
            layer = bertscore_layer
            if layer is None:
                from transformers import AutoConfig

                layer = AutoConfig.from_pretrained(bertscore, local_files_only=True).num_hidden_layers
            baseline = read_baseline(bertscore_baseline, layer)
        active["bertscore"] = BertScore(bertscore, bertscore_layer, device, baseline=baseline)
    else:
        skipped["bertscore"] = "no local model given (--bertscore DIR)"
    if chexbert:
        active["chexbert"] = CheXbertSimilarity(chexbert, device)
    else:
        skipped["chexbert"] = "no local model given (--chexbert DIR with chexbert.pth)"
    if radgraph and radgraph_annotations:
        raise ValueError("give a RadGraph model folder or an annotation file, not both")
    if radgraph:
        if not radgraph_python:
            raise ValueError("RadGraph needs --radgraph-python (or MEDVERSA_RADGRAPH_PYTHON): the Python of an "
                             "environment with the radgraph package and transformers<5")
        active["radgraph"] = RadGraphF1(RadGraphProcess(radgraph, radgraph_python))
    elif radgraph_annotations:
        active["radgraph"] = RadGraphF1(AnnotationFile(radgraph_annotations))
    else:
        skipped["radgraph"] = ("no local model given (--radgraph DIR with --radgraph-python, "
                               "or --radgraph-annotations FILE)")
    needs = [m for m in ("radgraph", "bertscore", "chexbert") if m not in active]
    if needs:
        skipped["radcliq"] = f"needs {', '.join(needs)}"
    elif active["bertscore"].baseline is None:  # type: ignore[attr-defined]
        skipped["radcliq"] = ("needs BERTScore rescaled as RadCliQ's is: --bertscore distilroberta-base folder, "
                              "--bertscore-layer 5, --bertscore-baseline bert-score's distilroberta-base.tsv")
    active = {name: RememberLast(metric) for name, metric in active.items()}
    if "radcliq" not in skipped:
        active["radcliq"] = RadCliQ(active["radgraph"], active["bertscore"], active["chexbert"])
    return list(active.values()), skipped
