"""pynetdicom's process-wide switches: set when the node starts an SCU or its SCP, never by an import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pynetdicom import _config

from medversa.node.pynetdicom_settings import configure_pynetdicom
from medversa.node.scu.association import make_ae

SWITCHES = ("LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS", "STORE_RECV_CHUNKED_DATASET")


@pytest.fixture
def pynetdicom_defaults():
    """pynetdicom's own defaults for the test, the process's values restored after it."""
    saved = {name: getattr(_config, name) for name in SWITCHES}
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = True
    _config.STORE_RECV_CHUNKED_DATASET = False
    yield
    for name, value in saved.items():
        setattr(_config, name, value)


def test_importing_the_node_changes_no_pynetdicom_switch() -> None:
    code = ("import medversa.node.scu, medversa.node.scp, medversa.node.priors, medversa.cli\n"
            "from pynetdicom import _config\n"
            f"print([getattr(_config, n) for n in {SWITCHES!r}])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[True, True, False]"  # pynetdicom's defaults


def test_an_scu_association_switches_identifier_logging_off_but_not_chunked_receive(pynetdicom_defaults) -> None:
    make_ae("MEDVERSA", timeout=5)
    assert not _config.LOG_REQUEST_IDENTIFIERS and not _config.LOG_RESPONSE_IDENTIFIERS
    assert not _config.STORE_RECV_CHUNKED_DATASET


def test_the_scp_also_receives_in_chunks(pynetdicom_defaults) -> None:
    configure_pynetdicom(chunked_receive=True)
    assert _config.STORE_RECV_CHUNKED_DATASET
    assert not _config.LOG_REQUEST_IDENTIFIERS and not _config.LOG_RESPONSE_IDENTIFIERS
    configure_pynetdicom()  # a later SCU call never switches the SCP's chunked receive off
    assert _config.STORE_RECV_CHUNKED_DATASET
