"""Orchestrated generation: batched decoding with a KV cache that keeps task-token states.

The LLM decodes greedily (or as a :data:`TokenChooser` says) from prompt
embeddings. Each step feeds only the new token and reuses the cached keys and
values, so the cost per token does not grow with the output. Whenever the input
token of a step is ``<DET>``, ``<2DSEG>`` or ``<3DSEG>``, the last-layer hidden
state of that step is kept: that is the state the published ``utils.generate``
hands to ``task_det_2d``/``task_seg_2d``/``task_seg_3d`` (``hidden_states[i][-1]``
where ``preds[i]`` is the task token). Decoding stops at the end symbol ``###``
(``StoppingCriteriaSub`` in the published code) or after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .model import MedVersaModel
from .tokenizer import MedVersaTokenizer

#: (step, logits [B, V]) -> next token ids [B]
TokenChooser = Callable[[int, torch.Tensor], torch.Tensor]


def greedy(step: int, logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


class NoRepeatNGram:
    """Greedy, except that no row repeats an ``size``-token sequence it has already written.

    A small LLM decoding greedily falls into loops ("he had fever, he had fever, ..."); this is the
    usual remedy (transformers' ``no_repeat_ngram_size``), over the generated tokens only. One
    instance per batch: it remembers what each row chose.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an n-gram has at least one token, got {size}")
        self.size = size
        self.history: list[list[int]] = []

    def banned(self, row: int) -> list[int]:
        """Tokens that would complete, in ``row``, an n-gram it already has."""
        history, n = self.history[row], self.size
        if len(history) < n - 1:
            return []
        prefix = history[len(history) - n + 1:]
        return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]

    def __call__(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        if not self.history:
            self.history = [[] for _ in range(logits.shape[0])]
        logits = logits.clone()
        for row in range(logits.shape[0]):
            banned = self.banned(row)
            if banned:
                logits[row, banned] = float("-inf")
        chosen = logits.argmax(dim=-1)
        for row, token in enumerate(chosen.tolist()):
            self.history[row].append(token)
        return chosen


class WithoutTokens:
    """Another chooser, with some tokens never chosen.

    Text answers (a report, a class name, a VQA or caption answer) must not carry a task token:
    decoded there, ``<DET>`` or ``<2DSEG>`` would make the analyzer draw a box or a mask from a
    report. The official code decodes them anywhere; a checkpoint opts in to this
    (``generation.text_answers_without_task_tokens``).
    """

    def __init__(self, inner: TokenChooser, banned: Sequence[int]) -> None:
        if not banned:
            raise ValueError("no tokens to leave out")
        self.inner = inner
        self.banned = list(banned)

    def __call__(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[:, self.banned] = float("-inf")
        return self.inner(step, logits)


class ForcedTokens:
    """Choose planted token sequences (tests, teacher forcing through the cached path)."""

    def __init__(self, sequences: Sequence[Sequence[int]], filler: int = 0) -> None:
        self.sequences = [list(s) for s in sequences]
        self.filler = filler

    def __call__(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        ids = [s[step] if step < len(s) else self.filler for s in self.sequences]
        return torch.tensor(ids, device=logits.device)


@dataclass
class TaskTokenState:
    """A generated task token and the last-layer hidden state computed with it as input."""

    position: int  # index among the generated ids
    token_id: int
    hidden: torch.Tensor  # [hidden]


@dataclass
class Generation:
    ids: list[int] = field(default_factory=list)
    task_states: list[TaskTokenState] = field(default_factory=list)
    reached_end: bool = False


def _left_pad(embeds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(e.shape[0] for e in embeds)
    hidden = embeds[0].shape[-1]
    batch = embeds[0].new_zeros(len(embeds), longest, hidden)
    mask = torch.zeros(len(embeds), longest, dtype=torch.long, device=embeds[0].device)
    for i, e in enumerate(embeds):
        batch[i, longest - e.shape[0]:] = e
        mask[i, longest - e.shape[0]:] = 1
    return batch, mask


class _Stopper:
    """Detects the end symbol in the decoded tail of each sequence."""

    def __init__(self, tokenizer: MedVersaTokenizer, end_sym: str, eos_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.end_sym = end_sym
        self.eos_id = eos_id

    def __call__(self, ids: list[int]) -> bool:
        if self.eos_id is not None and ids and ids[-1] == self.eos_id:
            return True
        return self.end_sym in self.tokenizer.decode(ids[-8:])


def generate(
    model: MedVersaModel,
    tokenizer: MedVersaTokenizer,
    prompt_embeds: Sequence[torch.Tensor],
    max_new_tokens: int,
    choose: TokenChooser = greedy,
    end_sym: str | None = "###",
) -> list[Generation]:
    """Decode every prompt ([T_i, hidden] embeddings) in one left-padded batch.

    ``end_sym=None`` disables stopping (benchmarks measure a fixed length).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lm = model.causal_lm
    backbone, head = lm.model, lm.lm_head
    embed = lm.get_input_embeddings()
    task_ids = set(tokenizer.task_token_ids)
    stopper = _Stopper(tokenizer, end_sym, tokenizer.hf.eos_token_id) if end_sym else None

    inputs, mask = _left_pad(prompt_embeds)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = backbone(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.cache
    logits = head(out.last_hidden_state[:, -1]).float()
    last_pos = positions[:, -1]

    results = [Generation() for _ in prompt_embeds]
    active = [True] * len(results)
    for step in range(max_new_tokens):
        next_ids = choose(step, logits)
        appended = list(active)
        for i, gen in enumerate(results):
            if appended[i]:
                gen.ids.append(int(next_ids[i]))
                if stopper is not None and stopper(gen.ids):
                    gen.reached_end = True
                    active[i] = False
        wants_state = [appended[i] and int(next_ids[i]) in task_ids for i in range(len(results))]
        last_step = step == max_new_tokens - 1
        if not (any(wants_state) or (any(active) and not last_step)):
            break
        mask = torch.cat([mask, mask.new_ones(len(results), 1)], dim=1)
        last_pos = last_pos + 1
        out = backbone(
            inputs_embeds=embed(next_ids[:, None]),
            attention_mask=mask,
            position_ids=last_pos[:, None],
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        state = out.last_hidden_state[:, -1]
        for i, gen in enumerate(results):
            if wants_state[i]:
                gen.task_states.append(TaskTokenState(len(gen.ids) - 1, int(next_ids[i]), state[i]))
        if last_step:
            break
        logits = head(state).float()
    return results
