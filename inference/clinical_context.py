"""The clinical context of a request, written one way for training and for the node.

The published model reads clinical context inside ``<context>...</context>`` for report
generation and classification. What it learned is only what it is asked if training and the
node write that text with the same function: training readers fill a :class:`ClinicalContext`
from a dataset's columns, the node fills one from DICOM headers
(:mod:`medversa.dicom_mapping.header_context`), and both call :func:`render_context` with the fields
the checkpoint was trained with (recorded in its metadata, see :mod:`.declaration`).

Never names, IDs or dates of birth: the dataclass has no place for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .tasks import Modality

#: Every field, in the order they are written.
CONTEXT_FIELDS: tuple[str, ...] = ("age", "sex", "view", "site", "indication", "comparison")

#: Per modality, which fields a request's context carries.
ContextFields = Mapping[Modality, Sequence[str]]

_LABELS = {"age": "Age", "sex": "Sex", "view": "View", "site": "Location", "indication": "Indication",
           "comparison": "Comparison"}


@dataclass(frozen=True)
class ClinicalContext:
    """What the request may say about the patient and the exam (all optional)."""

    #: Whole years.
    age: int | None = None
    #: "male", "female" or "other".
    sex: str | None = None
    #: Projection as the training data names it: "PA", "AP", "AP supine", "lateral" (several joined by ", ").
    view: str | None = None
    #: Body site of a skin lesion ("back", "lower extremity").
    site: str | None = None
    #: Why the exam was asked for (free text, identifiers removed).
    indication: str | None = None
    #: What the exam is compared with (report sections that name it).
    comparison: str | None = None

    def __post_init__(self) -> None:
        if self.age is not None and not 0 <= self.age < 150:
            raise ValueError(f"age {self.age} is not a plausible age in years")
        if self.sex is not None and self.sex not in ("male", "female", "other"):
            raise ValueError(f"sex {self.sex!r} is not 'male', 'female' or 'other'")


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """``fields`` validated (unknown names raise) and put in the canonical order."""
    unknown = [f for f in fields if f not in CONTEXT_FIELDS]
    if unknown:
        raise ValueError(f"unknown context field(s) {unknown}; known: {list(CONTEXT_FIELDS)}")
    return tuple(f for f in CONTEXT_FIELDS if f in fields)


def fields_for(modality: Modality, fields: ContextFields | None) -> tuple[str, ...]:
    """The fields used for ``modality``: all of them when nothing is declared."""
    if fields is None:
        return CONTEXT_FIELDS
    return check_fields(fields.get(modality, ()))


def _sentence(label: str, value: str) -> str:
    value = " ".join(value.split())
    return f"{label}: {value}" if value.endswith((".", "?", "!")) else f"{label}: {value}."


def render_context(context: ClinicalContext | None, modality: Modality, fields: ContextFields | None = None) -> str:
    """The text inside ``<context>``: "Age: 46. Sex: male. View: PA." (only the fields used for the modality)."""
    if context is None:
        return ""
    parts = []
    for name in fields_for(modality, fields):
        value = getattr(context, name)
        if value is None or value == "":
            continue
        parts.append(_sentence(_LABELS[name], str(value)))
    return " ".join(parts)
