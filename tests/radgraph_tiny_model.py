"""Write a tiny RadGraph model with random weights in the radgraph package's layout.

Run with an interpreter that has the ``radgraph`` package (transformers < 5), not ours:
``python tests/radgraph_tiny_model.py OUT`` writes ``OUT/tiny-bert`` and ``OUT/radgraph``
(config.json, vocabulary/, weights.th), built by the package's own DyGIE classes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

#: "a", "b", "1", "2": the package probes the tokenizer's special tokens with them.
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "pleural", "effusion", ".", "no", "pneumothorax",
         "heart", "is", "normal", "a", "b", "1", "2"]


def main(out: Path) -> None:
    bert = out / "tiny-bert"
    bert.mkdir(parents=True)
    (bert / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(vocab_file=str(bert / "vocab.txt"), model_max_length=512).save_pretrained(bert)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    model = out / "radgraph"
    (model / "vocabulary").mkdir(parents=True)
    (model / "vocabulary" / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    (model / "vocabulary" / "radgraph__ner_labels.txt").write_text("\nANAT-DP\nOBS-DP\nOBS-DA\nOBS-U\n")
    (model / "vocabulary" / "radgraph__relation_labels.txt").write_text("\nmodify\nlocated_at\nsuggestive_of\n")
    bert_params = {"model_name": str(bert), "max_length": 512}
    config = {
        "dataset_reader": {"token_indexers": {"bert": bert_params}, "max_span_width": 4},
        "model": {"type": "dygie", "embedder": {"token_embedders": {"bert": bert_params}},
                  "initializer": {}, "module_initializer": {},
                  "modules": {"ner": {}, "relation": {"spans_per_word": 0.5},
                              "coref": {"spans_per_word": 0.3, "max_antecedents": 10},
                              "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                         "loss_weights": {"trigger": 1.0, "arguments": 0.5}}},
                  "feature_size": 8, "max_span_width": 4, "target_task": "relation",
                  "feedforward_params": {"num_layers": 1, "hidden_dims": 16, "dropout": 0.0},
                  "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0}},
        "vocabulary": {}}
    (model / "config.json").write_text(json.dumps(config))

    from dotmap import DotMap
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    vocab = Vocabulary.from_files(str(model / "vocabulary"), None, None)
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(**bert_params)})
    params = DotMap(config).model
    for name in ("type", "embedder", "initializer", "module_initializer"):
        del params[name]
    torch.save(dygie.DyGIE(vocab=vocab, embedder=embedder, **params).state_dict(), model / "weights.th")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
