"""Scripted answers: plant a fixed answer per task instead of decoding freely.

For integration testing of the whole chain (PACS -> node -> PACS) without a trained
model: the planted answer's task tokens still drive the real detection and
segmentation modules, so SR, SEG and overlays are produced exactly as they would be.
``{target}`` in an answer is replaced by the class the prompt asks for.
"""

from __future__ import annotations

from collections.abc import Mapping

from .analyzer import ChooserFactory
from .generation import ForcedTokens, greedy
from .schema import TaskRequest
from .tasks import Task
from .tokenizer import MedVersaTokenizer


def scripted_chooser(tokenizer: MedVersaTokenizer, answers: Mapping[str, str]) -> ChooserFactory:
    """A chooser factory that plants ``answers[task]`` (greedy for tasks without a script)."""
    unknown = set(answers) - {t.value for t in Task}
    if unknown:
        raise ValueError(f"scripted answers for unknown task(s): {sorted(unknown)}")

    def factory(batch: list[tuple[TaskRequest, str]]):
        if not all(request.task.value in answers for request, _ in batch):
            return greedy
        seqs = []
        for request, question in batch:
            target = next((t for t in request.targets if t in question), request.targets[0] if request.targets else "")
            text = answers[request.task.value].format(target=target)
            if not text.rstrip().endswith("###"):
                text += "###"
            seqs.append(tokenizer.encode(text))
        return ForcedTokens(seqs)

    return factory
