"""Prompts exactly as the published model was trained and prompted.

``###Human:`` then, per image i, ``<img{i}>`` + nine ``<ImageHere>`` + ``</img{i}>``
(tokenized with BOS, ``MedOmni.prompt_wrap``); then the request, with clinical
context wrapped in ``<context>...</context>`` for report generation and
classification, + ``###Assistant:`` (tokenized without special tokens,
``prompt_concat``). Every ``<ImageHere>`` embedding is replaced by one visual
token of its image, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenizer import IMAGE_TOKEN, MedVersaTokenizer

HUMAN = "###Human:"
ASSISTANT = "###Assistant:"


def image_prefix(num_images: int, tokens_per_image: int) -> str:
    return HUMAN + "".join(
        f"<img{i}>" + IMAGE_TOKEN * tokens_per_image + f"</img{i}>" for i in range(num_images)
    )


def request_text(question: str, context: str = "", uses_context: bool = False) -> str:
    """The request part: ``<context>..</context>`` (report/classification) + question + ``###Assistant:``."""
    prefix = f"<context>{context}</context>" if uses_context else ""
    return prefix + question + ASSISTANT


@dataclass
class PromptIds:
    """Token ids of one prompt: image prefix (with BOS) and request."""

    prefix: list[int]
    request: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.request


def build_prompt_ids(
    tokenizer: MedVersaTokenizer,
    num_images: int,
    question: str,
    context: str = "",
    uses_context: bool = False,
    tokens_per_image: int = 9,
) -> PromptIds:
    prefix = tokenizer.encode_prefix(image_prefix(num_images, tokens_per_image))
    expected = num_images * tokens_per_image
    found = sum(1 for t in prefix if t == tokenizer.ids.image)
    if found != expected:
        raise ValueError(f"prefix holds {found} image placeholders, expected {expected}")
    return PromptIds(prefix, tokenizer.encode(request_text(question, context, uses_context)))


def embed_with_images(
    embed: torch.nn.Module, ids: torch.Tensor, image_id: int, visual_tokens: torch.Tensor
) -> torch.Tensor:
    """Embed ``ids`` [T] and put ``visual_tokens`` [n_img, k, H] at the placeholder positions."""
    is_image = ids == image_id
    n_slots = int(is_image.sum())
    flat = visual_tokens.reshape(-1, visual_tokens.shape[-1])
    if n_slots != flat.shape[0]:
        raise ValueError(f"{n_slots} image placeholders but {flat.shape[0]} visual tokens")
    embeds = embed(torch.where(is_image, torch.zeros_like(ids), ids))
    embeds = embeds.clone()
    embeds[is_image] = flat.to(embeds.dtype)
    return embeds
