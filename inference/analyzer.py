"""The one entry point the rest of the product uses: ``Analyzer.run(requests) -> answers``.

Requests are grouped by task and modality (the paper's domain-aware grouping,
which also keeps one code path per batch: 2D or 3D encoder, one prompt form) and
decoded together in batches. Everything runs under ``torch.inference_mode``, in
float32 on the CPU and bfloat16 on CUDA.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .boxes import duplicate_boxes
from .declaration import Declaration
from .generation import NoRepeatNGram, TokenChooser, WithoutTokens, generate, greedy
from .labels import label_tokens
from .model import MedVersaModel
from .processing import (
    box_to_pixels,
    postprocess_mask_2d,
    postprocess_mask_3d,
    preprocess_image,
    preprocess_volume,
)
from .prompting import ASSISTANT, build_prompt_ids, embed_with_images
from .schema import Answer, Box, Mask2D, Mask3D, TaskRequest
from .tasks import Task, TaskFamily
from .tokenizer import DET_TOKEN, NA_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN, MedVersaTokenizer

LOGGER = logging.getLogger(__name__)

#: The task groups whose answers carry task tokens; every other answer is text.
_ANSWERS_WITH_TASK_TOKENS = (TaskFamily.DETECTION, TaskFamily.SEGMENTATION)

#: Builds a batch's token chooser from its (request, instruction) pairs.
ChooserFactory = Callable[[list[tuple[TaskRequest, str]]], TokenChooser]


@dataclass
class _Job:
    """One prompt of one request (segmentation asks one class per prompt)."""

    request_index: int
    target: str
    question: str


def _cut_answer(text: str, end_sym: str) -> str:
    """The published post-processing: text before ``###``, after ``Assistant:``."""
    return text.split(end_sym)[0].split(ASSISTANT.lstrip("#"))[-1].strip()


class Analyzer:
    """Runs MedVersa task requests on one device."""

    def __init__(
        self,
        model: MedVersaModel,
        tokenizer: MedVersaTokenizer,
        device: str | torch.device | None = None,
        max_batch_size: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        cfg = model.config
        if len(tokenizer) != cfg.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens "
                             f"but the model's vocabulary is {cfg.llm.vocab_size}")
        self.max_batch_size = max_batch_size or cfg.generation.max_batch_size
        self.max_new_tokens = max_new_tokens or cfg.generation.max_new_tokens
        #: Identity of the weights (checkpoint SHA-256); empty for a freshly built model.
        self.model_id = ""
        #: What the weights were trained for (tasks, context fields); all of it for a fresh model.
        self.declaration = Declaration()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, **kwargs: object) -> Analyzer:
        from .checkpoint import load_checkpoint, read_meta

        model, tokenizer = load_checkpoint(path)
        analyzer = cls(model, tokenizer, device=device, **kwargs)  # type: ignore[arg-type]
        meta = read_meta(path)
        analyzer.model_id = meta["weights_sha256"]
        analyzer.declaration = Declaration.from_meta(meta)
        return analyzer

    @classmethod
    def from_preset(cls, name: str, device: str | None = None, seed: int = 0, **kwargs: object) -> Analyzer:
        """A randomly initialised preset (tests, benchmarks): its answers mean nothing."""
        from .checkpoint import build_model

        torch.manual_seed(seed)
        model, tokenizer = build_model(name)
        return cls(model, tokenizer, device=device, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, requests: list[TaskRequest], choose: TokenChooser = greedy,
            choose_for: ChooserFactory | None = None) -> list[Answer]:
        """Answer every request, in order.

        ``choose_for``, when given, builds the token chooser of each batch from its
        (request, instruction) pairs (scripted answers in tests and demos,
        per-task constrained decoding); otherwise every batch uses ``choose``.
        """
        answers = [Answer(r.request_id, r.task, "") for r in requests]
        groups: dict[tuple[str, str], list[_Job]] = defaultdict(list)
        for i, request in enumerate(requests):
            for target, question in request.prompts():
                groups[(request.task.value, request.modality.value)].append(_Job(i, target, question))
        texts: dict[int, list[str]] = defaultdict(list)
        for (task, modality), jobs in groups.items():
            for start in range(0, len(jobs), self.max_batch_size):
                batch = jobs[start:start + self.max_batch_size]
                t0 = time.perf_counter()
                if choose_for:
                    batch_choose = choose_for([(requests[j.request_index], j.question) for j in batch])
                else:
                    batch_choose = self._chooser(Task(task), choose)
                self._run_batch(requests, batch, answers, texts, batch_choose)
                LOGGER.info("ran %d %s/%s prompt(s) in %.2f s", len(batch), task, modality, time.perf_counter() - t0)
        for i, parts in texts.items():
            answers[i].text = " ".join(p for p in parts if p)
        return answers

    def _chooser(self, task: Task, choose: TokenChooser) -> TokenChooser:
        """The caller's chooser, or greedy decoding as the checkpoint's ``generation`` settings shape it:
        reports loop-free under ``report_no_repeat_ngram`` (a fresh chooser: it remembers its batch's
        choices), text answers without task tokens under ``text_answers_without_task_tokens``."""
        if choose is not greedy:
            return choose
        settings = self.model.config.generation
        size = settings.report_no_repeat_ngram
        if size is not None and task.family is TaskFamily.REPORT_GENERATION:
            choose = NoRepeatNGram(size)
        if settings.text_answers_without_task_tokens and task.family not in _ANSWERS_WITH_TASK_TOKENS:
            choose = WithoutTokens(choose, sorted(self.tokenizer.task_token_ids))
        return choose

    def _run_batch(self, requests: list[TaskRequest], jobs: list[_Job], answers: list[Answer],
                   texts: dict[int, list[str]], choose: TokenChooser) -> None:
        cfg = self.model.config
        volumetric = requests[jobs[0].request_index].modality.is_volume
        # Encode each request's images once, even when several prompts share them.
        encoded: dict[int, tuple[torch.Tensor, list, list[torch.Tensor]]] = {}
        for job in jobs:
            if job.request_index in encoded:
                continue
            request = requests[job.request_index]
            if volumetric:
                vols = [preprocess_volume(img.pixels, cfg.preprocess) for img in request.images]
                tokens, feats = [], []
                for vol in vols:
                    tok, f = self.model.encode_3d(vol.unsqueeze(0).to(self.device, self.dtype))
                    tokens.append(tok)
                    feats.append(f)
                encoded[job.request_index] = (torch.cat(tokens), feats, [])
            else:
                pixels = torch.stack([preprocess_image(img.pixels, cfg.preprocess) for img in request.images])
                pixels = pixels.to(self.device, self.dtype)
                encoded[job.request_index] = (self.model.encode_2d(pixels), [], [pixels])

        embeds = []
        for job in jobs:
            request = requests[job.request_index]
            prompt = build_prompt_ids(self.tokenizer, len(request.images), job.question, request.context,
                                      request.task.uses_context, cfg.num_visual_tokens)
            ids = torch.tensor(prompt.ids, device=self.device)
            embeds.append(embed_with_images(self.model.embed_ids, ids, self.tokenizer.ids.image,
                                            encoded[job.request_index][0]))

        generations = generate(self.model, self.tokenizer, embeds, self.max_new_tokens, choose, cfg.generation.end_sym)
        for job, gen in zip(jobs, generations, strict=False):
            request = requests[job.request_index]
            answer = answers[job.request_index]
            raw = self.tokenizer.decode(gen.ids)
            text = _cut_answer(raw, cfg.generation.end_sym)
            texts[job.request_index].append(text)
            answer.generated_tokens += len(gen.ids)
            answer.complete = answer.complete and gen.reached_end
            fallback = job.target or (request.targets[0] if len(request.targets) == 1 else "")
            labels = label_tokens(text, fallback)
            task_labels = [label for token, label in labels if token != NA_TOKEN]
            answer.absent.extend(label for token, label in labels if token == NA_TOKEN)
            if len(task_labels) != len(gen.task_states):
                # The text was cut before a token (max length): label what we can.
                task_labels += [fallback] * (len(gen.task_states) - len(task_labels))
            self._run_modules(request, job, gen.task_states, task_labels, encoded[job.request_index], answer)

    def _run_modules(self, request: TaskRequest, job: _Job, states: list, labels: list[str],
                     encoded: tuple[torch.Tensor, list, list[torch.Tensor]], answer: Answer) -> None:
        cfg = self.model.config.preprocess
        names = self.tokenizer.task_token_ids
        main = request.images[0]
        by_token: dict[str, list[tuple[str, torch.Tensor]]] = defaultdict(list)
        for state, label in zip(states, labels, strict=False):
            by_token[names[state.token_id]].append((label, state.hidden))
        if by_token[DET_TOKEN]:
            hidden = torch.stack([h for _, h in by_token[DET_TOKEN]])
            labelled = [(label, box_to_pixels(box, main.cols, main.rows))
                        for (label, _), box in zip(by_token[DET_TOKEN], self.model.detect(hidden), strict=False)]
            min_iou = self.model.config.generation.duplicate_box_iou
            repeated = duplicate_boxes(labelled, min_iou) if min_iou is not None else set()
            if repeated:
                LOGGER.info("request %s: %d repeated box(es) of a class dropped (IoU >= %.2f)",
                            request.request_id or job.request_index, len(repeated), min_iou)
            answer.boxes.extend(Box(label, *box, 0) for i, (label, box) in enumerate(labelled) if i not in repeated)
        if by_token[SEG2D_TOKEN] and not request.modality.is_volume:
            hidden = torch.stack([h for _, h in by_token[SEG2D_TOKEN]])
            logits = self.model.segment_2d(encoded[2][0][0], hidden)
            for (label, _), lg in zip(by_token[SEG2D_TOKEN], logits, strict=False):
                answer.masks_2d.append(Mask2D(label, postprocess_mask_2d(lg, (main.rows, main.cols), cfg), 0))
        if by_token[SEG3D_TOKEN] and request.modality.is_volume:
            hidden = torch.stack([h for _, h in by_token[SEG3D_TOKEN]])
            for (label, _), h in zip(by_token[SEG3D_TOKEN], hidden, strict=False):
                logits = self.model.segment_3d(encoded[1][0], h[None])[0]
                answer.masks_3d.append(Mask3D(label, postprocess_mask_3d(logits, main.pixels.shape, cfg), 0))
        wrong = ((by_token[SEG2D_TOKEN] and request.modality.is_volume)
                 or (by_token[SEG3D_TOKEN] and not request.modality.is_volume))
        if wrong:
            LOGGER.warning("request %s: the model emitted a segmentation token for the other dimensionality; ignored",
                           request.request_id or job.request_index)
