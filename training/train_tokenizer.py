"""Train the small bundled tokenizer used by the ``tiny`` and ``demo`` presets.

A byte-fallback BPE with a sentencepiece-style metaspace, like Llama-2's
tokenizer but with a 4,096-piece vocabulary learned from report text, so the
small models need no Llama download. The five MedVersa tokens are appended by
:class:`medversa.inference.tokenizer.MedVersaTokenizer` (ids 4096..4100).

Regenerate with ``python -m medversa.training.train_tokenizer IU_REPORTS_JSONL OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from medversa.inference import TEMPLATES

BASE_VOCAB_SIZE = 4096
SPECIALS = ["<unk>", "<s>", "</s>"]


def iu_report_texts(path: Path) -> Iterator[str]:
    """Indication, findings and impression texts of the IU X-ray reports.jsonl."""
    with path.open() as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not JSON ({exc})") from None
            for key in ("indication", "findings", "impression"):
                if record.get(key):
                    yield record[key]


def prompt_texts() -> Iterator[str]:
    for templates in TEMPLATES.values():
        yield from templates
    yield "###Human:<img0></img0>###Assistant: The segmentation mask of left lung is ###"


def train_tokenizer(texts: Iterable[str], vocab_size: int = BASE_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Metaspace(replacement="▁", prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS + byte_tokens,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    reports, out = Path(argv[0]), Path(argv[1])
    texts = list(iu_report_texts(reports)) + list(prompt_texts())
    hf = train_tokenizer(texts)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    print(f"wrote {out} ({len(hf)} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
