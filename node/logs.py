"""Logging for the service: JSON lines (one object per record) or plain text.

Every record passes :class:`medversa.node.phi.ScrubFilter` on its way out, and Python warnings
(pydicom's, which quote the values they complain about) are routed through logging so they pass it
too: no patient identifier of the data set being handled reaches the log in clear.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .phi import ScrubFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and scrubbed) by ScrubFilter
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", json_format: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter())
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings become records of "py.warnings", scrubbed like the rest
    root.setLevel(level.upper())
    for noisy in ("pynetdicom", "kombu", "celery", "amqp", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
