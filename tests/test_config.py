"""Configuration: TOML, KIZUNA_* variables and flags map 1:1; every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from kizuna.cli import build_parser, main
from kizuna.config import SETTABLE, Config, env_name, flag_name, load_config
from kizuna.core.options import NamespaceOptions
from kizuna.exceptions import ConfigError


def test_defaults_are_the_documented_ones() -> None:
    cfg = load_config(env={})
    assert (cfg.host, cfg.port, cfg.grpc_port, cfg.broker) == (
        "127.0.0.1",
        8000,
        50051,
        "memory://",
    )
    assert cfg.max_message_size == 65536
    assert (cfg.ping_interval, cfg.ping_timeout) == (25.0, 10.0)
    assert set(cfg.namespaces) == {"chat", "notifications"}
    assert cfg.websocket_compression is False


def test_every_field_is_documented() -> None:
    for f in SETTABLE:
        assert f.metadata.get("doc"), f.name


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('port = 1\nhost = "0.0.0.0"\nbroker = "memory://"\n')
    cfg = load_config(path, env={"KIZUNA_PORT": "2"}, overrides={})
    assert (cfg.port, cfg.host) == (2, "0.0.0.0")
    cfg = load_config(path, env={"KIZUNA_PORT": "2"}, overrides={"port": "3"})
    assert cfg.port == 3


def test_env_types_are_parsed() -> None:
    cfg = load_config(
        env={
            "KIZUNA_METRICS": "false",
            "KIZUNA_ALLOWED_ORIGINS": "http://a.example, http://b.example",
            "KIZUNA_PING_INTERVAL": "1.5",
            "KIZUNA_JWT_AUDIENCE": "",
        }
    )
    assert cfg.metrics is False
    assert cfg.allowed_origins == ["http://a.example", "http://b.example"]
    assert cfg.ping_interval == 1.5
    assert cfg.jwt_audience is None


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "port = 70000\n"
        'max_message_size = "big"\n'
        "metrics = 3\n"
        'log_format = "xml"\n'
        "colour = true\n"
        '[namespaces.chat]\nhistory_size = -1\npresence = "yes"\nwhatever = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"KIZUNA_JWT_SECRET": "short"})
    text = "\n".join(info.value.problems)
    for fragment in (
        "port: must be between",
        "max_message_size (from max_message_size)",
        "metrics (from metrics)",
        "log_format",
        "colour: unknown setting",
        "namespaces.chat.history_size: must not be negative",
        "namespaces.chat.presence: expected bool",
        "namespaces.chat.whatever: unknown option",
        "jwt_secret: must be at least 32 bytes",
    ):
        assert fragment in text
    assert len(info.value.problems) == 9


def test_namespaces_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "ns.toml"
    path.write_text(
        "[namespaces.game]\nhistory_size = 10\nhistory_ttl = 5\nallow_anonymous = true\n"
    )
    cfg = load_config(path, env={})
    assert cfg.namespaces == {
        "game": NamespaceOptions(history_size=10, history_ttl=5.0, allow_anonymous=True)
    }
    assert cfg.node_options().namespaces is cfg.namespaces


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().port = 1  # type: ignore[misc]


def test_cli_flags_mirror_config_fields() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for f in SETTABLE:
        assert flag_name(f.name) in flags
        assert env_name(f.name) == "KIZUNA_" + f.name.upper()


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('port = 9000\njwt_secret = "0123456789abcdef0123456789abcdef"\n')
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "port = 9000" in out
    assert "0123456789abcdef" not in out  # secrets are masked
    bad = tmp_path / "bad.toml"
    bad.write_text("port = -1\nmax_connections = -2\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "port" in err
    assert "max_connections" in err


def test_token_command(capsys: pytest.CaptureFixture[str]) -> None:
    import jwt

    secret = "0123456789abcdef0123456789abcdef"
    assert main(["token", "--sub", "ann", "--channels", "chat:*,x:y", "--secret", secret]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "ann"
    assert claims["channels"] == ["chat:*", "x:y"]
