"""Our BERTScore equals bert-score's on a byte-level BPE (RoBERTa) model, as bert-score computes it
where RadCliQ was fitted (transformers 4: the text gets a leading space, ``add_prefix_space``).

bert-score 0.3.13 under transformers 5 silently drops that prefix space (``encode`` ignores the
argument), so the reference runs in the transformers<5 environment CI builds for RadGraph
(MEDVERSA_RADGRAPH_PYTHON, with bert-score installed); without it this test is skipped, and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medversa.training.text_metrics import BertScore

PYTHON = os.environ.get("MEDVERSA_RADGRAPH_PYTHON", "")
CANDIDATES = ["The heart is normal. The lungs are clear.", "large left pleural effusion",
              "no effusion . the heart is large", " lungs are clear "]
REFERENCES = ["The heart is normal. The lungs are clear.", "the heart is normal", "left pleural effusion",
              "the lungs are clear and the heart is normal"]

REFERENCE_SCRIPT = """
import json, sys
from transformers import RobertaTokenizerFast
from bert_score import BERTScorer
bpe, folder = sys.argv[1], sys.argv[2]
RobertaTokenizerFast(vocab_file=bpe + "/vocab.json", merges_file=bpe + "/merges.txt",
                     model_max_length=512).save_pretrained(folder)
pairs = json.loads(sys.argv[3])
f1 = BERTScorer(model_type=folder, num_layers=2, lang="en").score(pairs[0], pairs[1])[2]
print(json.dumps(f1.tolist()))
"""


def _tiny_roberta(tmp: Path) -> tuple[Path, Path]:
    """A random two-layer RoBERTa with a byte-level BPE trained on the test texts: (bpe files, model)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe_dir, model_dir = tmp / "bpe", tmp / "model"
    bpe_dir.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((CANDIDATES + REFERENCES) * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(bpe_dir))
    vocab = json.loads((bpe_dir / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (bpe_dir / "merges.txt").read_text().splitlines()[1:] if line.strip()]
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=512)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=600, pad_token_id=1)
                 ).save_pretrained(model_dir)
    return bpe_dir, model_dir


@pytest.mark.skipif(not PYTHON, reason="MEDVERSA_RADGRAPH_PYTHON (a transformers<5 environment) is not set")
def test_bertscore_on_roberta_equals_bert_score_under_transformers_4(tmp_path: Path) -> None:
    bpe_dir, model_dir = _tiny_roberta(tmp_path)
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, reference_dir / name)
    run = subprocess.run([PYTHON, "-c", REFERENCE_SCRIPT, str(bpe_dir), str(reference_dir),
                          json.dumps([CANDIDATES, REFERENCES])], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    reference = json.loads(run.stdout.strip().splitlines()[-1])
    ours = BertScore(model_dir, layer=2, device="cpu").score(CANDIDATES, REFERENCES)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert ours[0] == pytest.approx(1.0)
