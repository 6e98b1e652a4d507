"""The node's configuration: one typed object, read once at start-up, passed down.

Sources, highest priority first: keyword arguments, ``PROLINK_*`` environment
variables, ``node.json`` in the node's data directory, defaults. This module is
the only place in the service that reads ``os.environ``; everything else gets a
``Settings`` (or the values it needs) from its caller.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from protocol import ProlinkError
from service.http_head import (  # the HTTP layer's own bounds are the defaults
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_HEAD_TIMEOUT_SECONDS,
    DEFAULT_MAX_HEAD_BYTES,
)

NODE_FILE = "node.json"

GiB = 1024**3


class ConfigError(ProlinkError):
    """A node's configuration that cannot be used: no ``node.json``, bad JSON, a value out of range."""

    code = "config.invalid"


def describe(exc: ValidationError) -> str:
    """Pydantic's complaints, one per setting, without the input values or its documentation links; a
    setting an environment variable gave is named by that variable."""

    def where(loc: tuple[Any, ...]) -> str:
        name = ".".join(str(part) for part in loc) or "settings"
        variable = f"PROLINK_{name.upper()}"
        return f"{name} (from {variable})" if loc and variable in os.environ else name

    return "; ".join(
        f"{where(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False, include_input=False)
    )


# Values read from node.json by ``Settings.load``; a context variable rather than
# a class attribute so that two nodes configured in one process (tests, demo)
# never see each other's file.
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("prolink_node_file", default=None)

_PARTY_RE = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")


class _NodeFileSource(PydanticBaseSettingsSource):
    """Settings read from the data directory's ``node.json`` (below the environment)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        values = _file_values.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Settings(BaseSettings):
    """Everything a node needs to know about itself that is not key material."""

    model_config = SettingsConfigDict(
        env_prefix="PROLINK_",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(description="The node's data directory (keys, database, node.json).")
    party: str = Field(description="This node's Party code, e.g. KZ or BY.")
    party_name: str = Field(default="", description="Human name of the Party; defaults to the code.")
    public_url: str = Field(
        default="",
        description="https URL at which peers reach this node's peer API; "
        "defaults to https://{peer_host}:{peer_port}.",
    )

    peer_host: str = "127.0.0.1"
    peer_port: int = Field(default=8443, ge=1, le=65535)
    user_host: str = "127.0.0.1"
    user_port: int = Field(default=8080, ge=1, le=65535)

    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; defaults to sqlite:///{data_dir}/node.db.",
    )

    allow_tls12: bool = False
    max_envelope_bytes: int = Field(default=4 * GiB, gt=0)
    max_request_head_bytes: int = Field(
        default=DEFAULT_MAX_HEAD_BYTES,
        ge=8 * 1024,
        le=1024 * 1024,
        description="Largest request line and headers either listener reads; a longer head is refused "
        "(431, request.headers_too_large; 400 from h11 where httptools is not installed) and its "
        "connection closed.",
    )
    request_head_timeout_seconds: float = Field(
        default=DEFAULT_HEAD_TIMEOUT_SECONDS,
        gt=0,
        le=600,
        description="How long either listener waits for a request's line and headers, from the connection "
        "(or, on a kept-alive connection, from the request's first byte); then 408, request.head_timeout, "
        "and the connection closed. Not applied where httptools is not installed (h11).",
    )
    request_body_timeout_seconds: float = Field(
        default=DEFAULT_BODY_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description="How long either listener waits for the next part of a request's body while it is ready "
        "to read it; then 408, request.body_timeout (after an answer: no 408), and the connection "
        "closed. A body that keeps arriving is never cut off. Not applied where httptools is not installed.",
    )
    clock_skew_seconds: int = Field(default=300, ge=0)

    delivery_max_age_seconds: int = Field(default=3 * 24 * 3600, gt=0)
    delivery_backoff_base_seconds: float = Field(default=1.0, gt=0)
    delivery_backoff_max_seconds: float = Field(default=300.0, gt=0)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    delivery_concurrency: int = Field(
        default=8, ge=1, le=64, description="Deliveries in flight at once (different threads only)."
    )
    delivery_batches_per_peer: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Deliveries of small envelopes in flight to one peer at once. What becomes due "
        "meanwhile waits for one of them to end and travels in the next batch: under load, fewer and "
        "fuller batches. One against two (bench/bench_exchange.py, 11 alternating pairs): more messages "
        "per second in 10 (-1% to +47%), less CPU per message in all 11 (4-36%), closed-loop p99 with no "
        "clear change. Big envelopes are not counted.",
    )
    batch_max_items: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most envelopes carried in one batched delivery, sent or accepted; 1 turns batching off.",
    )
    batch_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Largest batched delivery in bytes, sent or accepted; a bigger envelope travels alone.",
    )
    thread_switch_seconds: float = Field(
        default=0.001,
        gt=0,
        le=0.1,
        description="How long a busy Python thread keeps the interpreter before another may run "
        "(sys.setswitchinterval; Python's default is 0.005). The node's API, delivery and database "
        "threads hand over often; a shorter interval keeps them from queueing behind each other.",
    )
    delivery_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a worker's claim on a delivery lasts without renewal; after a crash, "
        "another worker (or the restarted one) takes the delivery over once it runs out.",
    )

    originals_due_days: int = Field(default=30, ge=1)

    audit_head_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        le=60,
        description="How often the node signs a new audit log head (when there are new entries) and has "
        "peers cosign it; at most a minute.",
    )

    key_passphrase_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the private key passphrase.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _NodeFileSource(settings_cls))

    @field_validator("party")
    @classmethod
    def _party_code(cls, value: str) -> str:
        if not _PARTY_RE.match(value):
            raise ValueError("party must be an upper-case code such as KZ or BY")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if not self.party_name:
            self.party_name = self.party
        if not self.public_url:
            host = f"[{self.peer_host}]" if ":" in self.peer_host else self.peer_host
            self.public_url = f"https://{host}:{self.peer_port}"
        if not self.public_url.startswith("https://"):
            raise ValueError("public_url must be an https:// URL")
        self.public_url = self.public_url.rstrip("/")
        if not self.database_url:
            self.database_url = self.default_database_url(self.data_dir)
        if self.delivery_backoff_max_seconds < self.delivery_backoff_base_seconds:
            raise ValueError("delivery_backoff_max_seconds must be >= delivery_backoff_base_seconds")
        return self

    # -- construction -----------------------------------------------------

    @staticmethod
    def default_database_url(data_dir: Path) -> str:
        return f"sqlite:///{Path(data_dir) / 'node.db'}"

    @classmethod
    def load(cls, data_dir: Path | str, **overrides: Any) -> Settings:
        """Settings of the node whose data directory is ``data_dir``.

        ``node.json`` there gives the base values, ``PROLINK_*``
        environment variables override it, ``overrides`` override both.
        """
        data_dir = Path(data_dir)
        path = data_dir / NODE_FILE
        if not path.exists():  # even if PROLINK_* variables could make up the settings: no node is here
            raise ConfigError(
                f"{data_dir} holds no node ({NODE_FILE} is missing): run `prolink init` first,"
                " or check --data-dir",
                code="config.missing",
            )
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} cannot be read: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        values.pop("data_dir", None)  # the directory is where the file is, not what it says
        token = _file_values.set(values)
        try:
            return cls(data_dir=data_dir, **overrides)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {describe(exc)}") from None
        finally:
            _file_values.reset(token)

    def save(self) -> Path:
        """Write ``node.json`` into the data directory (derived defaults left out).

        The data directory itself and a database URL that is just the default
        are not written, so a data directory can be moved or restored elsewhere.
        """
        values = self.model_dump(mode="json", exclude={"data_dir"})
        if self.database_url == self.default_database_url(self.data_dir):
            values.pop("database_url")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.data_dir / NODE_FILE
        tmp = path.with_suffix(".json.tmp")
        # Owner only, from the moment it exists: it may name a database with its password.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(values, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    # -- secrets from the environment ---------------------------------------

    def key_passphrase(self) -> bytes | None:
        """The private key passphrase from the environment variable the operator named, if any.

        A variable named but unset or empty is refused: keys must never be written unencrypted, or
        fail to open, because the passphrase did not reach the process."""
        if not self.key_passphrase_env:
            return None
        value = os.environ.get(self.key_passphrase_env)
        if not value:
            raise ConfigError(
                f"key_passphrase_env names {self.key_passphrase_env}, which is not set "
                "(or empty) in this environment",
                code="config.passphrase_missing",
            )
        return value.encode("utf-8")
