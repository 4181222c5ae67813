"""Dataset names -> readers: what a training config's ``datasets: [{name, root, split}]`` refers to.

Every reader takes ``(root, split, **options)`` and returns records of that
split (``split=None``: all). Names are fixed here so a config fails on a typo
instead of silently training on less.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..records import Record
from . import medinterp_mini
from .abdomenct1k import read_abdomenct1k
from .chest_imagenome import read_chest_imagenome
from .chexmask import read_chexmask
from .chexpert import read_chexpert_test
from .ham10000 import read_ham10000
from .iu_xray import read_iu_xray
from .medical_diff_vqa import read_medical_diff_vqa
from .mimic_cxr import read_mimic_cxr
from .ms_cxr import read_ms_cxr
from .nih_chestxray import read_nih_boxes

Reader = Callable[..., list[Any]]

#: The MedInterp sources (paper, Table 4) and the bundled medinterp-mini.
DATASETS: dict[str, Reader] = {
    "mimic-cxr": read_mimic_cxr,
    "chest-imagenome": read_chest_imagenome,
    "medical-diff-vqa": read_medical_diff_vqa,
    "ham10000": read_ham10000,
    "abdomenct-1k": read_abdomenct1k,
    "chexmask": read_chexmask,
    "chexpert-test": read_chexpert_test,
    "iu-xray": read_iu_xray,
    "nih-chestxray": read_nih_boxes,
    "ms-cxr": read_ms_cxr,
    "medinterp-mini": medinterp_mini.read_all,
}


def read_dataset(name: str, root: Path | str, split: str | None = None, **options: Any) -> list[Record]:
    """The records of dataset ``name`` under ``root``; ``options`` go to its reader (e.g. ``mimic_root``).

    Raises
    ------
    ValueError
        For an unknown name, an option the reader does not take, or a split the dataset does not have.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    reader = DATASETS[name]
    accepted = list(inspect.signature(reader).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option(s) {unknown}; its options: {accepted or 'none'}")
    return reader(Path(root), split, **options)
