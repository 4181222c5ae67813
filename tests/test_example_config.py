"""The documented example configuration (node/example_config.yaml) and the compose node config.

The example must load, show the defaults it claims, mention every key of the schema (walked from
the pydantic models, so a new setting without documentation fails here), comment every key, and
keep secrets out. Bad values fail with a ValueError that names the field; the environment beats
the file and flags beat the environment.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from medversa.node.settings import NodeSettings, Peer, default_rules, load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "node" / "example_config.yaml"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "medversa.yaml"
COMPOSE_FILE = REPO / "deploy" / "compose" / "docker-compose.yml"

#: The example's deliberate non-defaults; the file marks each "Example (default: ...)".
EXAMPLE_VALUES = {"pacs.peer", "export.destinations"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MEDVERSA_* variable of the calling shell may leak into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MEDVERSA_"):
            monkeypatch.delenv(name)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (Model, Model | None, list[Model]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of ``model`` as a dotted path; list items are written ``[]``."""
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _model_of(info.annotation)
        if nested is None:
            paths.append(path)
        else:
            is_list = typing.get_origin(info.annotation) is list
            paths += leaf_paths(nested, f"{path}{'[]' if is_list else ''}.")
    return paths


def _present(data: Any, parts: list[str]) -> bool:
    if not parts:
        return True
    key, rest = parts[0], parts[1:]
    is_list = key.endswith("[]")
    key = key.removesuffix("[]")
    if not isinstance(data, dict) or key not in data:
        return False
    value = data[key]
    if is_list:
        return isinstance(value, list) and any(_present(item, rest) for item in value)
    return _present(value, rest)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a dumped settings mapping by dotted path (lists, and EXAMPLE_VALUES, stay whole)."""
    if isinstance(value, dict) and prefix.rstrip(".") not in EXAMPLE_VALUES:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def secrets_in(path: Path) -> list[str]:
    """Lines (comments left out) that hold a password or credentials in a URL (a ``..._password_env``
    key names an environment variable, which is where the secret belongs)."""
    active = [line.split("#")[0] for line in path.read_text().splitlines()]
    return [line for line in active
            if re.search(r"://[^/\s]*@|password(?!_env: *(null|[A-Z_][A-Z0-9_]*) *$)|passphrase", line, re.IGNORECASE)]


def _example_data() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_example_loads():
    settings = load_settings(EXAMPLE)
    assert settings.scp.ae_title == "MEDVERSA"
    assert settings.embedded  # no broker in the file: serve runs its own worker


def test_example_shows_the_defaults_except_its_marked_examples():
    loaded = flatten(load_settings(EXAMPLE).model_dump(mode="json"))
    defaults = flatten(NodeSettings().model_dump(mode="json"))
    assert loaded.keys() == defaults.keys()
    differing = {key for key in loaded if loaded[key] != defaults[key]}
    assert differing == EXAMPLE_VALUES, {k: (loaded[k], defaults[k]) for k in differing ^ EXAMPLE_VALUES}
    assert load_settings(EXAMPLE).routing == default_rules()


def test_example_marks_its_non_default_values():
    text = EXAMPLE.read_text()
    for path in EXAMPLE_VALUES:
        key = path.split(".")[-1]
        block = re.search(rf"#[^\n]*Example \(default: [^)]+\)[^\n]*\n(?:\s*#[^\n]*\n)*\s*{key}:", text)
        assert block, f"{path} is not marked as an example value in {EXAMPLE.name}"
    assert Peer.parse("ORTHANC@127.0.0.1:4242") == load_settings(EXAMPLE).pacs.peer


def test_every_setting_appears_in_the_example():
    data = _example_data()
    paths = leaf_paths(NodeSettings)
    assert "scp.tls.verify_peers" in paths and "routing[].tasks" in paths and "pacs.peer.port" in paths
    missing = [path for path in paths if not _present(data, path.split("."))]
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"


def test_every_key_in_the_example_is_commented():
    lines = EXAMPLE.read_text().splitlines()
    uncommented = []
    for number, line in enumerate(lines):
        if not re.match(r"^\s*(- )?[A-Za-z_]+:", line):
            continue
        previous = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if "#" not in line and not previous.lstrip().startswith("#"):
            uncommented.append(f"{number + 1}: {line.strip()}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_example_holds_no_secret():
    assert not secrets_in(EXAMPLE)
    text = EXAMPLE.read_text()
    assert "MEDVERSA_BROKER_URL=redis://:password@" in text and "MEDVERSA_DATABASE_URL=postgresql://" in text


@pytest.mark.parametrize(
    ("change", "field", "detail"),
    [
        (lambda d: d["scp"].update(port=70000), "scp.port", "less than or equal to 65535"),
        (lambda d: d["scp"].update(ae_titel="X"), "scp.ae_titel", "Extra inputs are not permitted"),
        (lambda d: d.update(brokr_url="redis://x"), "brokr_url", "Extra inputs are not permitted"),
        (lambda d: d["routing"][1]["tasks"].append("tumour_staging"), "routing.1.tasks", "tumour_staging"),
        (lambda d: d["export"].update(destinations=["FOO@bar"]), "export.destinations", "AE@HOST:PORT"),
        (lambda d: d["pacs"].update(peer="ORTHANC@pacs"), "pacs.peer", "AE@HOST:PORT"),
        (lambda d: d["scp"].update(ae_title="A" * 17), "scp.ae_title", "1-16 printable characters"),
        (lambda d: d["pacs"].update(retrieve="fetch"), "pacs.retrieve", "'move' or 'get'"),
        (lambda d: d["retention"].update(refuse_above=1.5), "retention.refuse_above", "less than or equal to 1"),
        (lambda d: d["scp"]["tls"].update(enabled=True), "scp.tls", "needs tls.certificate"),
    ],
    ids=["port-out-of-range", "unknown-nested-key", "unknown-top-level-key", "unknown-task",
         "malformed-destination", "malformed-pacs-peer", "long-ae-title", "bad-retrieve", "fraction-above-1",
         "tls-without-files"],
)
def test_a_bad_value_names_its_field(tmp_path: Path, change, field: str, detail: str):
    data = _example_data()
    change(data)
    with pytest.raises(ValueError) as caught:
        load_settings(_write(tmp_path, data))
    message = str(caught.value)
    assert re.search(rf"^\s*{re.escape(field)}(\.[\w\[\]-]+)*: ", message, re.MULTILINE), message
    assert detail in message, message


def test_the_environment_beats_the_file_and_flags_beat_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDVERSA_SCP__PORT", "11199")
    monkeypatch.setenv("MEDVERSA_LOGGING__LEVEL", "DEBUG")
    monkeypatch.setenv("MEDVERSA_BROKER_URL", "redis://:s3cret@redis:6379/0")
    settings = load_settings(EXAMPLE)
    assert settings.scp.port == 11199
    assert settings.scp.ae_title == "MEDVERSA" and settings.scp.max_associations == 10  # rest of scp: file
    assert settings.logging.level == "DEBUG" and settings.logging.json_format is True
    assert settings.broker_url == "redis://:s3cret@redis:6379/0" and not settings.embedded
    assert settings.pacs.peer == Peer(ae_title="ORTHANC", host="127.0.0.1", port=4242)  # untouched: file

    assert load_settings(EXAMPLE, **{"scp.port": 11200}).scp.port == 11200


def test_a_bad_environment_value_names_its_field(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDVERSA_SCP__PORT", "70000")
    with pytest.raises(ValueError, match=r"scp\.port"):
        load_settings(EXAMPLE)


def test_compose_node_config_validates_for_the_compose_network(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDVERSA_BROKER_URL", "redis://:pw@redis:6379/0")
    settings = load_settings(COMPOSE_CONFIG)
    assert not settings.embedded
    assert settings.pacs.peer == Peer(ae_title="ORTHANC", host="orthanc", port=4242)
    assert settings.export.destinations == [Peer(ae_title="ORTHANC", host="orthanc", port=4242)]
    assert settings.scp.allowed_calling_aes == ["ORTHANC"]
    assert settings.model.queue == "medversa-7b"
    assert not secrets_in(COMPOSE_CONFIG)


def test_compose_file_wires_orthanc_redis_node_and_gpu_worker():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {"orthanc", "redis", "node", "worker-gpu"} <= services.keys()
    node_env = services["node"]["environment"]
    assert "MEDVERSA_BROKER_URL" in node_env and "@redis:6379" in node_env["MEDVERSA_BROKER_URL"]
    worker = services["worker-gpu"]
    assert "--queues" in worker["command"] and "medversa-7b" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # The node, its worker and Orthanc share the names the Orthanc and node configs use.
    orthanc_json = (REPO / "deploy" / "orthanc" / "orthanc.json").read_text()
    assert '"medversa" : [ "MEDVERSA", "node", 11112 ]' in orthanc_json
