"""Dataset readers by name, as training configs list them ({name, root, split})."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..records import Record
from . import medinterp_mini

DATASETS: dict[str, Callable[..., list[Record]]] = {
    "medinterp-mini": medinterp_mini.read_all,
}


def read_dataset(name: str, root: Path, split: str) -> list[Record]:
    try:
        reader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
    return reader(Path(root), split)
