"""Headless Chromium driven over the DevTools protocol, for the viewer tests (standard library only).

Chromium speaks the protocol over a pair of pipes (``--remote-debugging-pipe``: it reads commands
on fd 3 and writes answers and events on fd 4, each a JSON message ending with NUL), so no
WebSocket client and no browser download are needed: Debian's ``chromium`` is the browser.
WebGL runs in software (SwiftShader), which renders OHIF's Cornerstone viewports headless.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
    "--disable-gpu-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist", "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@dataclass
class ConsoleEntry:
    """One console message, uncaught exception or browser log entry of the page."""

    level: str  # "error", "warning", "info", ...
    text: str
    source: str = "console"


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    answer: dict | None = None


class Chromium:
    """One headless Chromium with one page; collects the page's console output."""

    def __init__(self, width: int = 1600, height: int = 1000, binary: str | None = None) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (bash .ci/install installs it)")
        self._profile = tempfile.TemporaryDirectory(prefix="medversa-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def _fds() -> None:  # in the child: the protocol pipes on fds 3 and 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=_fds, pass_fds=(3, 4),  # kept open after _fds ran stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self.events: queue.Queue[dict] = queue.Queue()
        self.console: list[ConsoleEntry] = []
        #: (status, URL) of every response with an HTTP error status.
        self.failed: list[tuple[int, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr = threading.Thread(target=self.process.stderr.read, daemon=True)  # keep it drained
        self._stderr.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- protocol -------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    pending = self._pending.pop(message["id"], None)
                    if pending:
                        pending.answer = message
                        pending.event.set()
                else:
                    self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method", ""), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_arg_text(a) for a in params.get("args", []))
            self.console.append(ConsoleEntry(params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append(ConsoleEntry("error", text, "exception"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(ConsoleEntry(entry.get("level", "info"), entry.get("text", ""), "log"))
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            if int(response.get("status", 0)) >= 400:
                self.failed.append((int(response["status"]), str(response.get("url", ""))))
        if method.startswith("Network."):
            return  # many, and only failures matter
        self.events.put(message)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params: Any) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            pending = self._pending[ident] = _Pending()
            message: dict[str, Any] = {"id": ident, "method": method, "params": params}
            if session:
                message["sessionId"] = self.session
            os.write(self._to_child, json.dumps(message).encode() + b"\0")
        if not pending.event.wait(timeout):
            raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
        answer = pending.answer or {}
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    # -- page -----------------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        result = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.5) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"page condition not met within {timeout} s: {expression} (last {value!r})")

    def double_click(self, x: float, y: float) -> None:
        """A real double click (mouse events through the browser's input pipeline)."""
        self.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x, y=y)
        for count in (1, 2):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left",
                          clickCount=count)

    def click(self, x: float, y: float) -> None:
        """A real single left click at (x, y)."""
        self.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arg_text(arg: dict) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("type", ""))
