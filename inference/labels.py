"""Which class a generated task token belongs to.

The published code returns one box and one mask per answer; we return every
one, labelled with the class phrase that precedes its token. Training targets
read "The segmentation mask of liver is <3DSEG>" or "right lung <DET>, heart
<N/A>", so the phrase is the clause before the token with the connecting words
stripped. A clause that names no class ("and its mask is <2DSEG>") refers to
the previous class; failing that, to the only class the request asked for.
"""

from __future__ import annotations

import re

from .tokens import DET_TOKEN, NA_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN

_TOKEN_RE = re.compile("(" + "|".join(re.escape(t) for t in (DET_TOKEN, SEG2D_TOKEN, SEG3D_TOKEN, NA_TOKEN)) + ")")
_LEAD = re.compile(
    r"^(?:and|or|with|the|a|an|there is|there are|is|are|at|of|its|their|it|in|for|mask|box|"
    r"segmentation mask of|segmentation of|mask of|bounding box of|location of|box of)\b\s*",
    re.IGNORECASE,
)
_TAIL = re.compile(r"\s*\b(?:is|are|at|located at|located|found at|shown at|in|as|:)\s*$", re.IGNORECASE)
_PRONOUNS = {"", "it", "its mask", "mask", "its box", "box", "its", "their mask", "them", "its location"}


def _clean(clause: str) -> str:
    phrase = clause.strip(" \t\n,;:.")
    for _ in range(6):
        before = phrase
        phrase = _LEAD.sub("", phrase).strip()
        phrase = _TAIL.sub("", phrase).strip(" ,;:")
        if phrase == before:
            break
    return phrase


def label_tokens(text: str, fallback: str = "") -> list[tuple[str, str]]:
    """``(token, label)`` for every task or ``<N/A>`` token in ``text``, in order."""
    out: list[tuple[str, str]] = []
    previous = fallback
    pieces = _TOKEN_RE.split(text)
    for i in range(1, len(pieces), 2):
        before = pieces[i - 1]
        clause = re.split(r"[.;\n]|,(?![^()]*\))", before)[-1] if before else ""
        label = _clean(clause)
        if label.lower() in _PRONOUNS:
            label = previous
        out.append((pieces[i], label))
        previous = label or previous
    return out
