"""Tokenizer with MedVersa's special tokens.

The published model adds ``<ImageHere>`` as an additional special token and
``<DET>``, ``<2DSEG>``, ``<3DSEG>``, ``<N/A>`` as ordinary added tokens to the
Llama-2 tokenizer (ids 32000..32004; medomni.py). We do the same to whatever base
tokenizer we load: the Llama-2 sentencepiece tokenizer from a local folder for
``medversa-7b``, or the small bundled BPE tokenizer (``assets/tokenizer``) for
``tiny`` and ``demo``. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .tokens import DET_TOKEN, IMAGE_TOKEN, NA_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN, TASK_TOKENS

LOGGER = logging.getLogger(__name__)

__all__ = ["MedVersaTokenizer", "SpecialIds", "IMAGE_TOKEN", "DET_TOKEN", "SEG2D_TOKEN", "SEG3D_TOKEN",
           "NA_TOKEN", "TASK_TOKENS"]

BUNDLED_TOKENIZER = Path(__file__).parent / "assets" / "tokenizer"


@dataclass(frozen=True)
class SpecialIds:
    image: int
    det: int
    seg2d: int
    seg3d: int
    na: int
    bos: int


class MedVersaTokenizer:
    """Thin wrapper: the HF tokenizer plus the ids and encodings MedVersa needs."""

    def __init__(self, hf: PreTrainedTokenizerBase) -> None:
        self.hf = hf
        if IMAGE_TOKEN not in hf.get_vocab():
            hf.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        for token in (DET_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN, NA_TOKEN):
            if token not in hf.get_vocab():
                hf.add_tokens(token)
        vocab = hf.get_vocab()
        if hf.bos_token_id is None:
            raise ValueError("the base tokenizer has no BOS token")
        self.ids = SpecialIds(
            image=vocab[IMAGE_TOKEN],
            det=vocab[DET_TOKEN],
            seg2d=vocab[SEG2D_TOKEN],
            seg3d=vocab[SEG3D_TOKEN],
            na=vocab[NA_TOKEN],
            bos=hf.bos_token_id,
        )

    @classmethod
    def from_path(cls, path: str | Path | None = None) -> MedVersaTokenizer:
        """Load from a local folder (tokenizer.json, or a sentencepiece tokenizer.model)."""
        folder = Path(path) if path else BUNDLED_TOKENIZER
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {folder}")
        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(hf)

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def task_token_ids(self) -> dict[int, str]:
        return {self.ids.det: DET_TOKEN, self.ids.seg2d: SEG2D_TOKEN, self.ids.seg3d: SEG3D_TOKEN}

    def encode_prefix(self, text: str) -> list[int]:
        """The image prefix, tokenized with BOS as the published prompt_wrap does."""
        return [self.ids.bos] + self.encode(text)

    def encode(self, text: str) -> list[int]:
        """Text without special tokens (question, answer), as prompt_concat does."""
        return list(self.hf(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def save(self, folder: str | Path) -> None:
        self.hf.save_pretrained(str(folder))
