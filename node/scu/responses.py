"""Reading DIMSE responses: status texts, numbers from response attributes, a missing response.

Status categories and descriptions are pynetdicom's tables (PS3.7 Annex C; the service
classes' statuses in PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
"""

from __future__ import annotations

from typing import Any

from pynetdicom.status import GENERAL_STATUS, code_to_category

from medversa.node.settings import Peer


def no_response(peer: Peer, service: str, timeout: float) -> str:
    """The message for a response that never came (pynetdicom answers an empty status)."""
    return (f"no {service} response from {peer} within {timeout} s, or the association was "
            f"aborted")


def status_text(code: int, table: dict[int, tuple[str, str]]) -> str:
    """``0xA700 Failure: description`` from a service class's table, else the general one."""
    category, text = table.get(code, GENERAL_STATUS.get(code, (code_to_category(code), "")))
    return f"0x{code:04X} {category}" + (f": {text}" if text else "")


def int_or_none(value: Any) -> int | None:
    """An IS/US attribute's value as int; None when empty or not a number (a PACS may send either)."""
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None

