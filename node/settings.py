"""The node's one configuration file: YAML, with environment overrides, validated (pydantic-settings).

Precedence: command-line flags > environment (``MEDVERSA_...``, nested with ``__``, e.g.
``MEDVERSA_SCP__PORT=11113``) > the YAML file > defaults. Secrets (broker and database
passwords, TLS key passphrases) belong in the environment, never in a file kept in a repository.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .routing import RoutingRule, default_rules

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash, 16 chars
_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AE_RE.match(value):
        raise ValueError(f"AE title {value!r} must be 1-16 printable characters without a backslash")
    return value


class PeerTLS(BaseModel):
    """DICOM TLS (PS3.15 B.1) on the associations we open to one peer (exports, queries, retrieves).

    The peer's certificate is checked against ``ca_certificates`` (host names are not: the CA is
    the trust anchor); our ``certificate`` and ``private_key`` are presented when the peer asks
    for one (mutual authentication). A passphrase-protected key names the environment variable
    that holds the passphrase: secrets never sit in the configuration file.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    #: CA bundle (PEM) that signs the peer's certificate.
    ca_certificates: Path | None = None
    #: Check the peer's certificate against ``ca_certificates``.
    verify_peers: bool = True
    #: Our certificate chain (PEM), for peers that require one.
    certificate: Path | None = None
    #: Our private key (PEM).
    private_key: Path | None = None
    #: Name of the environment variable holding the private key's passphrase (never the passphrase).
    private_key_password_env: str | None = None

    @model_validator(mode="after")
    def _files(self) -> PeerTLS:
        self._check_files()
        return self

    def _check_files(self) -> None:
        if self.enabled and self.verify_peers and not self.ca_certificates:
            raise ValueError("tls.verify_peers needs tls.ca_certificates")
        if bool(self.certificate) != bool(self.private_key):
            raise ValueError("tls.certificate and tls.private_key go together")
        if self.private_key_password_env is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*",
                                                                          self.private_key_password_env):
            raise ValueError("tls.private_key_password_env is not an environment variable name in capitals "
                             "(e.g. MEDVERSA_TLS_KEY_PASSWORD): give the variable's name, never the passphrase")

    def private_key_password(self) -> str | None:
        """The key's passphrase from the environment; None when no variable is named.

        Raises ``ValueError`` when the named variable is not set.
        """
        if not self.private_key_password_env:
            return None
        value = os.environ.get(self.private_key_password_env)
        if value is None:
            raise ValueError(f"the passphrase of {self.private_key} is expected in the environment variable "
                             f"{self.private_key_password_env}, which is not set")
        return value


class TLSSettings(PeerTLS):
    """DICOM TLS (PS3.15 B.1) on our listener: our certificate and key, and the CA that signs our peers'."""

    #: Refuse plain connections (only a TLS listener is opened).
    required: bool = True

    def _check_files(self) -> None:
        if self.enabled and not (self.certificate and self.private_key):
            raise ValueError("tls.enabled needs tls.certificate and tls.private_key")
        super()._check_files()


class Peer(BaseModel):
    """A DICOM peer: AE title, host and port (written ``AE@HOST:PORT``), and how we connect to it."""

    model_config = ConfigDict(extra="forbid")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: DICOM TLS on our associations to this peer (the short form ``AE@HOST:PORT`` has none).
    tls: PeerTLS = Field(default_factory=PeerTLS)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @classmethod
    def parse(cls, text: str) -> Peer:
        match = _PEER_RE.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        return cls(ae_title=match["ae"], host=match["host"], port=int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _peer(value: Any) -> Any:
    return Peer.parse(value) if isinstance(value, str) else value


class SCPSettings(BaseModel):
    """The receiving side (our Storage SCP)."""

    model_config = ConfigDict(extra="forbid")
    ae_title: str = "MEDVERSA"
    bind: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    #: Calling AE titles allowed to associate (empty: any).
    allowed_calling_aes: list[str] = Field(default_factory=list)
    #: Peer addresses allowed to connect (empty: any).
    allowed_hosts: list[str] = Field(default_factory=list)
    max_associations: int = Field(10, ge=1, le=200)
    #: Maximum PDU we accept; 0 = unlimited.
    max_pdu: int = Field(0, ge=0)
    network_timeout_s: float = Field(60.0, gt=0)
    #: Largest instance (its Part 10 file as spooled) we store, in bytes; a larger one is written no
    #: further than this and refused with 0xA700 (PS3.4 B.2.3). Also bounds one association's memory.
    max_instance_bytes: int = Field(1024**3, gt=0)
    #: Largest total of one study's spooled instances, in bytes; an instance that would pass it: 0xA700.
    max_study_bytes: int = Field(16 * 1024**3, gt=0)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [check_ae_title(v) for v in values]

    @model_validator(mode="after")
    def _check_sizes(self) -> SCPSettings:
        if self.max_instance_bytes > self.max_study_bytes:
            raise ValueError(f"max_instance_bytes ({self.max_instance_bytes}) is over max_study_bytes "
                             f"({self.max_study_bytes}): a study holds at least one instance")
        return self


class PACSSettings(BaseModel):
    """The PACS we query for completeness and priors, and how we retrieve from it."""

    model_config = ConfigDict(extra="forbid")
    peer: Peer | None = None
    retrieve: Literal["move", "get"] = "move"
    query_timeout_s: float = Field(30.0, gt=0)
    retrieve_timeout_s: float = Field(300.0, gt=0)
    #: Confirm study completeness against the PACS's Number of Study Related Instances.
    confirm_completeness: bool = True
    #: Longest wait for missing instances before processing what arrived.
    completeness_wait_s: float = Field(600.0, ge=0)

    _check_peer = field_validator("peer", mode="before")(classmethod(lambda cls, v: _peer(v)))


class ExportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destinations: list[Peer] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_initial_s: float = Field(5.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse(cls, values: Any) -> Any:
        return [_peer(v) for v in values or []]


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: A checkpoint folder; empty: the bundled model.
    checkpoint: Path | None = None
    #: A preset with random weights (testing only).
    preset: str | None = None
    device: str | None = None
    #: Celery queue this model's jobs go to (GPU hosts consume the queues of the models they hold).
    queue: str = "medversa-demo"
    #: Integration testing without a trained model: a YAML/JSON file mapping task -> planted
    #: answer (e.g. ``chest_organ_segmentation: "The segmentation mask of {target} is <2DSEG>."``).
    #: The real vision modules still run on the planted task tokens. Never for clinical use.
    scripted_answers: Path | None = None
    #: Clinical context fields per modality (``{cxr: [age, sex, view, indication]}``); empty: the
    #: fields the checkpoint declares it was trained with (what ``medversa model info`` shows).
    context_fields: dict[str, list[str]] | None = None

    @field_validator("context_fields")
    @classmethod
    def _fields(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is not None:
            from medversa.inference import context_fields_from

            context_fields_from(value)  # raises with the unknown modality or field
        return value


class JobSettings(BaseModel):
    """How often a job is tried when something that passes by itself stops it (PACS or database
    unreachable, disk momentarily full, worker lost); other failures end it at once."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(4, ge=1, le=50)
    retry_initial_s: float = Field(30.0, gt=0)
    retry_max_s: float = Field(900.0, gt=0)


class RetentionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: float = Field(3.0, ge=0)
    #: Start removing the oldest finished studies above this disk fill fraction.
    cleanup_above: float = Field(0.85, gt=0, le=1)
    #: Refuse new associations above this fill fraction.
    refuse_above: float = Field(0.95, gt=0, le=1)


class HTTPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(8089, ge=0, le=65535)


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: str = "INFO"
    json_format: bool = True
    #: Write patient names/IDs into logs; otherwise they are hashed.
    log_phi: bool = False


class NodeSettings(BaseSettings):
    """Everything ``serve`` and ``worker`` need."""

    model_config = SettingsConfigDict(env_prefix="MEDVERSA_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("./medversa-data")
    #: SQLAlchemy URL of the job store; empty: SQLite in data_dir.
    database_url: str | None = None
    #: Celery broker; empty: the embedded SQLite transport with a worker inside ``serve``.
    broker_url: str | None = None
    idle_seconds: float = Field(30.0, gt=0)
    organisation_uid_root: str = "1.2.826.0.1.3680043.10.1462."
    scp: SCPSettings = Field(default_factory=SCPSettings)
    pacs: PACSSettings = Field(default_factory=PACSSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    routing: list[RoutingRule] = Field(default_factory=default_rules)
    model: ModelSettings = Field(default_factory=ModelSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    #: Write presentation states / burned-in images / key object selections.
    presentation_states: bool = True
    burned_in: bool = True
    key_objects: bool = False
    #: A study with nothing the model could read, though it was sent films to read (a decubitus film),
    #: still gets an SR naming each film and why it was not analysed.
    not_analysed_notice: bool = True

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the YAML file (passed in as init too).
        return (init_settings, env_settings, file_secret_settings)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'medversa.db').resolve()}"

    @property
    def embedded(self) -> bool:
        return not self.broker_url


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(path: Path | None = None, **overrides: Any) -> NodeSettings:
    """YAML file (optional) + environment + explicit overrides (flags), validated.

    Raises ``ValueError`` with every problem listed by field path.
    """
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        leaked = secrets_in_file(data)
        if leaked:
            raise ValueError("invalid configuration:\n  " + "\n  ".join(leaked))

    class _FromFile(NodeSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return (init_settings, env_settings, _YamlSource(settings_cls, data))

    try:
        return NodeSettings.model_validate(_FromFile(**_clean(overrides)).model_dump())
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid configuration:\n  " + "\n  ".join(lines)) from None


_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:]*:[^/@]+@", re.IGNORECASE)


def secrets_in_file(data: dict[str, Any]) -> list[str]:
    """Problems of a configuration file that holds a secret (a URL with a password).

    A file may be kept in a repository or printed; the environment (a 0600 env file under
    systemd, ``.env`` under compose) is where passwords go, as the module docstring says.
    """
    problems = []
    for key in ("database_url", "broker_url"):
        value = data.get(key)
        if isinstance(value, str) and _URL_PASSWORD.match(value.strip()):
            problems.append(f"{key}: holds a password; give this URL in the environment as "
                            f"MEDVERSA_{key.upper()}, never in the configuration file")
    return problems


def _clean(overrides: dict[str, Any]) -> dict[str, Any]:
    """Drop None flags; nested keys as 'scp.port' become nested dicts."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - interface requirement
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)
