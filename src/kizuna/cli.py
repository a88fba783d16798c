"""The ``kizuna`` command: serve, token, check-config, and the client tools sub and pub.

``kizuna serve`` takes one flag per Config field (``--port`` ↔ ``KIZUNA_PORT``
↔ ``port`` in TOML); flags are generated from the Config dataclass, so the
three stay in step by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from kizuna import __version__
from kizuna.config import SETTABLE, Config, field_type, flag_name, load_config
from kizuna.exceptions import ConfigError

__all__ = ["main"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file (KIZUNA_CONFIG)")
    for f in SETTABLE:
        kind, _ = field_type(f.name)
        help_text = f.metadata.get("doc", "")
        if kind is bool:
            parser.add_argument(
                flag_name(f.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag_name(f.name), default=None, metavar="VALUE", help=help_text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in SETTABLE if getattr(args, f.name) is not None}


def _serve(args: argparse.Namespace) -> int:
    from kizuna.core.auth import mint_token
    from kizuna.observability import configure_logging, get_logger
    from kizuna.server import Server, dev_secret

    config = load_config(args.config, overrides=_overrides(args))
    configure_logging(config.log_level, config.log_format)
    log = get_logger("kizuna.cli")
    dev = not (config.jwt_secret or config.jwt_public_key or config.jwks_url)
    if dev:
        config = dataclasses.replace(
            config, jwt_secret=dev_secret(), api_key=config.api_key or dev_secret()
        )
    server = Server(config)
    url = f"http://{config.host}:{config.port}"
    grpc = f", gRPC on {config.host}:{config.grpc_port}" if config.grpc_port else ""
    print(f"kizuna {__version__} serving on {url}{grpc} (broker {config.broker})", flush=True)
    if dev:
        assert config.jwt_secret is not None
        token = mint_token(config.jwt_secret, "dev-user", ttl=24 * 3600)
        print("no JWT key configured: generated a development secret", flush=True)
        print(f"  KIZUNA_JWT_SECRET={config.jwt_secret}", flush=True)
        print(f"  KIZUNA_API_KEY={config.api_key}", flush=True)
        print(f"  token for dev-user (24 h): {token}", flush=True)
        print(f"  demo: {url}/?token={token}", flush=True)
    log.info("server_starting", host=config.host, port=config.port, broker=config.broker)
    try:
        import uvloop

        uvloop.run(server.serve())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(server.serve())
    return 0


def _token(args: argparse.Namespace) -> int:
    from kizuna.core.auth import mint_token

    config = load_config(args.config)
    secret = args.secret or config.jwt_secret
    if not secret:
        print("kizuna token: no secret (use --secret or KIZUNA_JWT_SECRET)", file=sys.stderr)
        return 2
    channels = [c for c in args.channels.split(",") if c] if args.channels else None
    print(
        mint_token(
            secret,
            args.sub,
            ttl=float(args.ttl),
            channels=channels,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
        )
    )
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file, env={})
    print(f"{args.file}: ok")
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name.startswith("jwt_secret") or f.name in {"api_key", "jwt_previous_secret"}:
            value = "***" if value else value
        print(f"  {f.name} = {value!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kizuna", description="realtime messaging server")
    parser.add_argument("--version", action="version", version=f"kizuna {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _add_config_flags(serve)
    serve.set_defaults(run=_serve)

    token = sub.add_parser("token", help="mint an HS256 token")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--channels", help="comma-separated channel names or patterns")
    token.add_argument("--ttl", default="3600", help="seconds until it expires")
    token.add_argument("--secret", help="HS256 secret (default: KIZUNA_JWT_SECRET)")
    token.add_argument("--config", help="TOML file")
    token.set_defaults(run=_token)

    check = sub.add_parser("check-config", help="validate a TOML file, reporting every problem")
    check.add_argument("file")
    check.set_defaults(run=_check_config)

    from kizuna.client.cli import add_client_commands

    add_client_commands(sub)  # sub and pub: operators' tools, built on the Python client
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"kizuna: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
