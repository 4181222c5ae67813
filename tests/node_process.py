"""A real ``medversa serve`` process for fault and bad-input tests, and dcmtk's storescu as its peer.

The node runs as it does in production (own process group, its embedded worker as a child), so a
test can kill it, fill its disk or feed it broken data and then look at what it left behind: the
log, the spool, the job store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from medversa.benchmarks.peers import free_port

from .dicom_tools import need_tool

#: Called AE title of the node in these tests.
NODE_AE = "MEDVERSA"

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def node_config(tmp: Path, port: int, **extra: object) -> Path:
    """A YAML configuration for a node on 127.0.0.1:``port`` with its data under ``tmp/node``."""
    path = tmp / "medversa.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp / "node"), "idle_seconds": 1,
        "scp": {"ae_title": NODE_AE, "bind": "127.0.0.1", "port": port},
        "http": {"port": free_port()}, "model": {"preset": "tiny"},
        "logging": {"json_format": False, "level": "INFO"}, **extra}))
    return path


#: One torch thread per model process: the tests share a few cores with other processes, and
#: oversubscribed torch threads make the tiny model tens of times slower.
MODEL_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_serve(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``medversa serve`` in its own process group (so its worker can be signalled with it)."""
    return subprocess.Popen([sys.executable, "-m", "medversa.cli", "serve", "--config", str(config)],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **MODEL_ENV, **(env or {})})


def stop_serve(proc: subprocess.Popen) -> None:
    """A clean shutdown (SIGTERM to the group), SIGKILL if it has not ended within 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    """Poll ``predicate`` until it holds; otherwise fail with ``what`` and the tail of the node's log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}; node log:\n{log.read_text()[-4000:]}")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of ``proc`` (serve and its worker) and reap ``proc``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(30)


def storescu(port: int, *paths: Path, options: tuple[str, ...] = (), timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (debug output, so every response status is printed) to the node."""
    # TCP_NODELAY=1: dcmtk's run-time switch for the Nagle algorithm, which Debian's build leaves on;
    # with it on every C-STORE waits out a delayed ACK (about 40 ms), as no PACS of ours would.
    return subprocess.run([need_tool("storescu"), "-d", *options, "-aet", "PACS", "-aec", NODE_AE, "127.0.0.1",
                           str(port), *map(str, paths)], capture_output=True, text=True, timeout=timeout,
                          check=False, env=dict(os.environ, TCP_NODELAY="1"))


def statuses(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The C-STORE response statuses storescu received, in order."""
    return [int(code, 16) for code in _STATUS.findall(result.stdout + result.stderr)]


def mount_tmpfs(folder: Path, size: str) -> None:
    """A small tmpfs at ``folder`` (a disk that really fills up); skips the test where mounting is
    not permitted (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs at {folder} ({mounted.stderr.strip() or 'mount failed'}): "
                    "this test needs root")


def unmount(folder: Path) -> None:
    """Unmount ``folder`` (lazily: a process that still holds a file there lets go when it ends)."""
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
