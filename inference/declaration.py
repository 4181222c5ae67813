"""What a checkpoint declares about itself: the tasks it was trained for and the context it reads.

``medversa train`` writes the declaration into ``medversa-checkpoint.json``; the node runs only the
intersection of what its routing asks and what the checkpoint declares, and renders clinical context
with exactly the fields training used. A checkpoint without a declaration (the published 7B converted
with ``convert-official``, older folders) is taken to do all tasks and to read every context field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .clinical_context import ContextFields, check_fields
from .tasks import Modality, Task

TASKS_KEY = "declared_tasks"
CONTEXT_KEY = "context_fields"
PRIOR_DETAILS_KEY = "prior_details"
VIEWS_KEY = "views_per_request"


@dataclass(frozen=True)
class Declaration:
    """A checkpoint's promise to the node."""

    #: Tasks the weights were trained for (the node routes nothing else to them).
    tasks: tuple[Task, ...] = tuple(Task)
    #: Context fields per modality used in training; None: every field, for every modality.
    context_fields: ContextFields | None = None
    #: Whether comparison prompts name the prior's date and description (as training wrote them).
    prior_details: bool = False
    #: The most chest views one report or classification request held in training; None: not known
    #: (the node sends up to :data:`~.tasks.MAX_VIEWS`, as the paper). A model trained on single films
    #: answered a findings request with two films by a class name ("pneumonia"), not a report.
    views_per_request: int | None = None

    def __post_init__(self) -> None:
        if self.views_per_request is not None and (isinstance(self.views_per_request, bool)
                                                   or not isinstance(self.views_per_request, int)
                                                   or self.views_per_request < 1):
            raise ValueError(f"{VIEWS_KEY} is a whole number of at least 1, got {self.views_per_request!r}")

    def to_meta(self) -> dict:
        meta: dict = {TASKS_KEY: [t.value for t in self.tasks], PRIOR_DETAILS_KEY: self.prior_details}
        if self.context_fields is not None:
            meta[CONTEXT_KEY] = {m.value: list(f) for m, f in self.context_fields.items()}
        if self.views_per_request is not None:
            meta[VIEWS_KEY] = self.views_per_request
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping) -> Declaration:
        """The declaration in a checkpoint's metadata (all tasks and fields when it has none)."""
        tasks = tuple(Task(t) for t in meta[TASKS_KEY]) if TASKS_KEY in meta else tuple(Task)
        fields = meta.get(CONTEXT_KEY)
        return cls(tasks, context_fields_from(fields) if fields is not None else None,
                   bool(meta.get(PRIOR_DETAILS_KEY, False)), meta.get(VIEWS_KEY))

    def declares(self, task: Task) -> bool:
        return task in self.tasks


def context_fields_from(value: Mapping[str, Sequence[str]]) -> dict[Modality, tuple[str, ...]]:
    """``{"cxr": ["age", ...]}`` (a recipe, a config file, checkpoint metadata) validated."""
    return {Modality(m): check_fields(list(f)) for m, f in value.items()}
