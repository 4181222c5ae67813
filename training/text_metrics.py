"""Model-based report metrics of the paper's Table 1, each from a local model folder.

The paper scores reports with BLEU-4, BERTScore, CheXbert, RadGraph and RadCliQ
(Results, "Radiology report generation"; refs. 23-27). BLEU-4 needs no model
(:mod:`.metrics`). The others need trained models that this package never
downloads, so each runs only when its local path is given:

- ``bertscore`` (Zhang et al. 2020): greedy cosine matching of contextual token
  embeddings, F1 per report, from any local Hugging Face encoder folder. Raw
  scores (no baseline rescaling, no idf); ``layer`` defaults to the last hidden
  layer, while the reference ``bert-score`` package picks a tuned layer per model
  (e.g. 5 for distilroberta-base): pass it to match.
- ``chexbert``: CheXbert vector similarity, the cosine of the two reports' [CLS]
  embeddings from CheXbert's BERT (RadCliQ's ``semb_score``, CXR-Report-Metric).
  The folder holds the published ``chexbert.pth`` and the bert-base-uncased
  ``config.json`` and tokenizer files it was trained with.
- ``radgraph`` and ``radcliq`` are not implemented here: RadGraph F1 needs the
  DyGIE++ RadGraph model (allennlp), and RadCliQ combines it with the other
  three. They are always reported as skipped; write the generated reports with
  ``medversa eval --predictions`` and score them with CXR-Report-Metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

LOGGER = logging.getLogger(__name__)

MODEL_METRICS = ("bertscore", "chexbert", "radgraph", "radcliq")
_NOT_IMPLEMENTED = {
    "radgraph": "not implemented in medversa-node (needs the DyGIE++ RadGraph model); "
                "score --predictions output with CXR-Report-Metric",
    "radcliq": "not implemented in medversa-node (combines RadGraph with BLEU, BERTScore and CheXbert); "
               "score --predictions output with CXR-Report-Metric",
}


class TextMetric(Protocol):
    """A per-report text metric: one score per (candidate, reference) pair."""

    name: str

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray: ...


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class BertScore:
    """BERTScore F1 per report from a local encoder folder (see the module docstring)."""

    name = "bertscore"

    def __init__(self, path: str | Path, layer: int | None = None, device: str | None = None,
                 batch_size: int = 16) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"bertscore model folder {path} does not exist")
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        layers = self.model.config.num_hidden_layers
        self.layer = layers if layer is None else layer
        if not 0 <= self.layer <= layers:
            raise ValueError(f"bertscore layer must be in 0..{layers} for {path}, got {layer}")
        self.batch_size = batch_size

    def _embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Unit-length embeddings of every non-special token of each text."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            enc = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt",
                                 return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask").bool()
            with torch.inference_mode():
                hidden = self.model(**enc.to(self.device), output_hidden_states=True).hidden_states[self.layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
            keep = enc["attention_mask"].cpu().bool() & ~special
            out += [hidden[i][keep[i]].numpy() for i in range(len(chunk))]
        return out

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"got {len(candidates)} candidates but {len(references)} references")
        scores = []
        for c, r in zip(self._embed(candidates), self._embed(references)):
            if len(c) == 0 or len(r) == 0:
                scores.append(0.0)
                continue
            sim = c @ r.T
            precision, recall = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
            scores.append(0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall))
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


def load_text_metrics(bertscore: str | Path | None = None, bertscore_layer: int | None = None,
                      chexbert: str | Path | None = None,
                      device: str | None = None) -> tuple[list[TextMetric], dict[str, str]]:
    """The model-based metrics whose local models are given, and ``{metric: reason}`` for the rest."""
    active: list[TextMetric] = []
    skipped: dict[str, str] = {}
    if bertscore:
        active.append(BertScore(bertscore, bertscore_layer, device))
    else:
        skipped["bertscore"] = "no local model given (--bertscore DIR)"
    if chexbert:
        active.append(CheXbertSimilarity(chexbert, device))
    else:
        skipped["chexbert"] = "no local model given (--chexbert DIR with chexbert.pth)"
    skipped.update(_NOT_IMPLEMENTED)
    return active, skipped
