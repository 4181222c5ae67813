"""The local Orthanc of :mod:`medversa.benchmarks.local_orthanc`, plus the pytest helper that starts one."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from medversa.benchmarks.local_orthanc import (
    ORTHANC_BINARY,
    OrthancServer,
    free_port,
    wait_for,
)

__all__ = ["OrthancServer", "free_port", "wait_for", "orthanc_server", "ORTHANC_BINARY"]


def orthanc_server(tmp_path_factory: pytest.TempPathFactory, **kwargs: Any) -> OrthancServer:
    """A started :class:`OrthancServer` in a fresh temporary folder; skips when Orthanc is missing.

    The caller stops it (or uses it as a context manager). ``kwargs`` go to the constructor.
    """
    if not ORTHANC_BINARY.exists() or shutil.which(str(ORTHANC_BINARY)) is None:
        pytest.skip(f"{ORTHANC_BINARY} is not installed (bash .ci/install installs it)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), **kwargs)
    return server.start()
