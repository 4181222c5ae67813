"""Finding dcmtk's command-line tools (pynetdicom installs Python apps with the same names)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def dcmtk(name: str) -> str | None:
    """Path of dcmtk's ``name`` (storescu, storescp, echoscu, ...), skipping this environment's bin folder."""
    own = {Path(sys.prefix, "bin").resolve(), Path(sys.executable).parent.resolve()}
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/bin", "/usr/local/bin"]:
        if not folder or Path(folder).resolve() in own:
            continue
        found = shutil.which(name, path=folder)
        if found:
            return found
    return None
