"""One typed, frozen configuration, from a TOML file, ``KIZUNA_*`` variables and flags.

Every field of :class:`Config` can be set three ways, and the names map 1:1:

=====================  ===========================  ==========================
TOML key               environment variable         command-line flag
=====================  ===========================  ==========================
``port``               ``KIZUNA_PORT``              ``--port``
``max_message_size``   ``KIZUNA_MAX_MESSAGE_SIZE``  ``--max-message-size``
=====================  ===========================  ==========================

Precedence: flag > environment > file > default. Namespaces are set in the
file only (``[namespaces.chat]``). :func:`load_config` validates everything
and raises one :class:`~kizuna.exceptions.ConfigError` listing every bad field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from kizuna.core.options import NamespaceOptions, NodeOptions, default_namespaces
from kizuna.exceptions import ConfigError

__all__ = ["ENV_PREFIX", "Config", "load_config"]

ENV_PREFIX = "KIZUNA_"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Config:
    """kizuna's configuration. Each field documents its default and what 0 or None means."""

    host: str = field(default="127.0.0.1", metadata=_doc("address to listen on"))
    port: int = field(default=8000, metadata=_doc("HTTP/WebSocket port"))
    grpc_port: int = field(default=50051, metadata=_doc("gRPC port; 0 turns gRPC off"))
    broker: str = field(
        default="memory://", metadata=_doc("broker URL: memory://, redis://host:port/db")
    )
    jwt_secret: str | None = field(default=None, metadata=_doc("HS256 secret"))
    jwt_previous_secret: str | None = field(
        default=None, metadata=_doc("previous HS256 secret, accepted during rotation")
    )
    jwt_public_key: str | None = field(
        default=None, metadata=_doc("PEM public key (RS*/ES*), or a path to a PEM file")
    )
    jwks_url: str | None = field(default=None, metadata=_doc("JWKS URL for RS*/ES* keys"))
    jwt_audience: str | None = field(default=None, metadata=_doc("required aud; None: unchecked"))
    jwt_issuer: str | None = field(default=None, metadata=_doc("required iss; None: unchecked"))
    api_key: str | None = field(
        default=None, metadata=_doc("key for the /api/ server API; None turns the API off")
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata=_doc("Origins allowed to connect; empty: only same-host and non-browser clients"),
    )
    max_message_size: int = field(
        default=65536, metadata=_doc("largest inbound message in bytes (4004 beyond)")
    )
    client_queue_max_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_doc("outbound bytes queued per connection before a slow disconnect (3002)"),
    )
    connect_timeout: float = field(
        default=10.0, metadata=_doc("seconds to wait for the connect command (3007)")
    )
    ping_interval: float = field(default=25.0, metadata=_doc("heartbeat interval, seconds"))
    ping_timeout: float = field(
        default=10.0, metadata=_doc("heartbeat answer timeout, seconds; 0: no timeout")
    )
    max_connections: int = field(default=0, metadata=_doc("per node; 0: no limit"))
    max_connections_per_user: int = field(default=0, metadata=_doc("per user; 0: no limit"))
    max_channels_per_connection: int = field(
        default=128, metadata=_doc("subscriptions per connection; 0: no limit")
    )
    history_max_limit: int = field(
        default=1000, metadata=_doc("most publications one history/recovery answer returns")
    )
    max_connections_per_ip: int = field(default=0, metadata=_doc("per client IP; 0: no limit"))
    command_rate: float = field(
        default=0.0, metadata=_doc("commands per second per connection (111, then 4005); 0: off")
    )
    command_burst: int = field(default=50, metadata=_doc("burst above command_rate"))
    token_expiry_grace: float = field(
        default=10.0, metadata=_doc("seconds to refresh after a token expires (3006)")
    )
    drain_window: float = field(
        default=5.0, metadata=_doc("seconds over which SIGTERM closes clients (3001, jittered)")
    )
    handshake_timeout: float = field(
        default=10.0, metadata=_doc("seconds a new TCP connection has to send its headers")
    )
    presence_ttl: float = field(
        default=60.0, metadata=_doc("seconds a presence entry lives unless refreshed")
    )
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error"))
    log_format: str = field(default="json", metadata=_doc("json or console"))
    metrics: bool = field(
        default=True, metadata=_doc("count metrics and serve /metrics and /dashboard/stats")
    )
    websocket_compression: bool = field(
        default=False, metadata=_doc("permessage-deflate (costs memory per connection)")
    )
    namespaces: dict[str, NamespaceOptions] = field(
        default_factory=default_namespaces,
        metadata=_doc("channel namespaces (TOML only: [namespaces.NAME])"),
    )

    def node_options(self) -> NodeOptions:
        """The core's options: every NodeOptions field has a Config field of the same name."""
        values = {f.name: getattr(self, f.name) for f in fields(NodeOptions)}
        return NodeOptions(**values)

    def public_key_pem(self) -> str | None:
        key = self.jwt_public_key
        if key is None or key.lstrip().startswith("-----BEGIN"):
            return key
        return Path(key).read_text()


_HINTS = get_type_hints(Config)
SETTABLE = [f for f in fields(Config) if f.name != "namespaces"]
"""Fields that have an environment variable and a flag."""


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(name: str) -> tuple[type, bool]:
    """(the field's type without None, whether None is allowed)."""
    hint = _HINTS[name]
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], True
    return (get_origin(hint) or hint), False


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML value or a string (env, flag) into the field's type; raises ValueError."""
    kind, optional = field_type(name)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ValueError("must be set")
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ValueError("expected a list of strings")
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _check(cfg: Config) -> list[str]:
    problems = []
    for name in ("port", "grpc_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            problems.append(f"{name}: must be between 0 and 65535")
    for name in (
        "max_message_size",
        "client_queue_max_bytes",
        "connect_timeout",
        "ping_interval",
        "history_max_limit",
        "handshake_timeout",
    ):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name}: must be greater than 0")
    for name in (
        "ping_timeout",
        "max_connections",
        "max_connections_per_ip",
        "command_rate",
        "command_burst",
        "token_expiry_grace",
        "drain_window",
        "max_connections_per_user",
        "max_channels_per_connection",
        "presence_ttl",
    ):
        if getattr(cfg, name) < 0:
            problems.append(f"{name}: must not be negative")
    if cfg.log_level not in {"debug", "info", "warning", "error"}:
        problems.append("log_level: must be debug, info, warning or error")
    if cfg.log_format not in {"json", "console"}:
        problems.append("log_format: must be json or console")
    if cfg.jwt_secret is not None and len(cfg.jwt_secret.encode()) < 32:
        problems.append("jwt_secret: must be at least 32 bytes (RFC 7518 §3.2)")
    return problems


def _namespaces(raw: Any, problems: list[str]) -> dict[str, NamespaceOptions]:
    if not isinstance(raw, dict):
        problems.append("namespaces: must be a table of tables")
        return default_namespaces()
    known = {f.name: f for f in fields(NamespaceOptions)}
    out = {}
    for ns, table in raw.items():
        if not isinstance(table, dict):
            problems.append(f"namespaces.{ns}: must be a table")
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            spec = known.get(key)
            if spec is None:
                problems.append(f"namespaces.{ns}.{key}: unknown option")
                continue
            expected = type(spec.default)
            accepted = (int, float) if expected is float else (expected,)
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, accepted):
                problems.append(f"namespaces.{ns}.{key}: expected {expected.__name__}")
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                problems.append(f"namespaces.{ns}.{key}: must not be negative")
                continue
            values[key] = value
        out[ns] = NamespaceOptions(**values)
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config: file, then environment, then ``overrides`` (flags).

    Raises ConfigError listing every problem found, not just the first.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, Any] = {}
    path = path or env.get(env_name("config"))
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"config file {path}: {exc}"]) from exc
    values: dict[str, Any] = {}
    names = {f.name for f in SETTABLE}
    for key in raw:
        if key not in names and key != "namespaces":
            problems.append(f"{key}: unknown setting")
    for f in SETTABLE:
        sources = [
            (f.name, raw.get(f.name), f.name in raw),
            (env_name(f.name), env.get(env_name(f.name)), env_name(f.name) in env),
            (flag_name(f.name), (overrides or {}).get(f.name), f.name in (overrides or {})),
        ]
        for source, value, present in sources:
            if not present:
                continue
            try:
                values[f.name] = _coerce(f.name, value)
            except (ValueError, TypeError) as exc:
                problems.append(f"{f.name} (from {source}): {exc}")
    if "namespaces" in raw:
        values["namespaces"] = _namespaces(raw["namespaces"], problems)
    cfg = dataclasses.replace(Config(), **values)
    problems.extend(_check(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg
