"""Small process tools: dcmtk's command-line programs (pynetdicom installs Python apps with the
same names), and loopback ports for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; RuntimeError after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port}")
