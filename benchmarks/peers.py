"""Small process tools: dcmtk's command-line programs (pynetdicom installs Python apps with the
same names), and loopback ports for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import time


def _is_python_script(path: str) -> bool:
    """A console script (``#!...python``), like the pynetdicom apps that shadow dcmtk's names."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def dcmtk(name: str) -> str | None:
    """Path of dcmtk's ``name`` (storescu, storescp, echoscu, ...), never a Python app of that name
    from any virtual environment on the PATH."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/bin", "/usr/local/bin"]:
        found = shutil.which(name, path=folder) if folder else None
        if found and not _is_python_script(found):
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
