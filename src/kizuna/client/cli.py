"""``kizuna sub`` and ``kizuna pub``: the Python client on the command line, for operators.

``kizuna sub CHANNEL…`` prints each publication as one JSON line on stdout
(``{"channel", "offset", "epoch", "data", "info"}``), so it pipes into ``jq``
or a file; connection changes and gaps go to stderr, so they never mix with
the data. It reconnects and recovers like any client, and says so when a
gap could not be recovered. ``kizuna pub CHANNEL DATA`` publishes one JSON
value (``-`` reads it from stdin) and prints its position.

The server and the token come from ``--url`` / ``KIZUNA_URL`` and
``--token`` / ``KIZUNA_TOKEN`` (prefer the variable: arguments show in
``ps``). These are client settings, not server Config fields.

Exit status: 0 done; 1 the server refused (the numbered code is printed) or
the client stopped for good; 2 bad usage (for example DATA that is not JSON).

The commands are added to the main ``kizuna`` parser by
:func:`add_client_commands`; ``python -m kizuna.client.cli`` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from kizuna.client.backoff import Backoff
from kizuna.client.connection import Client
from kizuna.client.errors import ClientError, Disconnected, ServerRejected
from kizuna.client.events import ConnectionState, Publication, StateChange, Subscribed

__all__ = ["DEFAULT_URL", "add_client_commands", "main", "run_pub", "run_sub"]

DEFAULT_URL = "ws://127.0.0.1:8000/connection/websocket"
_PUB_BACKOFF = Backoff(min_delay=0.5, max_delay=2.0, max_attempts=3)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        action="append",
        help=f"WebSocket URL; repeat for several nodes (KIZUNA_URL; default {DEFAULT_URL})",
    )
    parser.add_argument("--token", help="JWT (default: KIZUNA_TOKEN; none: anonymous)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each answer (10)"
    )


def add_client_commands(subparsers: Any) -> None:
    """Add ``sub`` and ``pub`` to the ``kizuna`` command (``parser.add_subparsers()``)."""
    sub = subparsers.add_parser(
        "sub", help="subscribe and print publications as JSON lines (client)"
    )
    sub.add_argument("channels", nargs="+", metavar="CHANNEL")
    sub.add_argument("--count", type=int, help="exit after this many publications")
    _add_connection_flags(sub)
    sub.set_defaults(run=run_sub)

    pub = subparsers.add_parser("pub", help="publish one JSON value (client)")
    pub.add_argument("channel", metavar="CHANNEL")
    pub.add_argument("data", metavar="DATA", help="a JSON value, or - to read it from stdin")
    pub.add_argument("--idempotency-key", help="publishing twice with one key publishes once")
    _add_connection_flags(pub)
    pub.set_defaults(run=run_pub)


def _urls(args: argparse.Namespace) -> list[str]:
    if args.url:
        return list(args.url)
    return [os.environ.get("KIZUNA_URL") or DEFAULT_URL]


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("KIZUNA_TOKEN") or None


def _fail(command: str, message: str, status: int) -> int:
    print(f"kizuna {command}: {message}", file=sys.stderr, flush=True)
    return status


# --- sub -----------------------------------------------------------------------------------------


def _publication_line(pub: Publication) -> bytes:
    line: dict[str, Any] = {"channel": pub.channel, "offset": pub.offset, "epoch": pub.epoch}
    line["data"] = pub.data
    if pub.info is not None:
        line["info"] = {"user": pub.info.user, "client": pub.info.client}
    return orjson.dumps(line)


def _describe(event: Subscribed) -> str:
    where = f"offset {event.position.offset}" if event.position else "no history"
    if event.gap:
        return (
            f"{event.channel}: gap — what was published after {event.since} could not be "
            f"recovered; resuming at {where}"
        )
    if event.recovered:
        return f"{event.channel}: recovered {event.missed} missed publications"
    return f"subscribed to {event.channel} ({where})"


def _report_state(change: StateChange) -> None:
    if change.state is ConnectionState.CONNECTED:
        print(f"kizuna sub: connected to {change.url}", file=sys.stderr, flush=True)
    elif change.state is ConnectionState.DISCONNECTED and change.reconnect:
        print(
            f"kizuna sub: disconnected ({change.code} {change.reason}); "
            f"reconnecting in {change.delay or 0:.1f} s",
            file=sys.stderr,
            flush=True,
        )


async def _sub(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        return _fail("sub", "--count must be at least 1", 2)
    queue: asyncio.Queue[Publication | Subscribed] = asyncio.Queue()

    def handler(event: object) -> None:
        if isinstance(event, Publication | Subscribed):
            queue.put_nowait(event)

    client = Client(_urls(args), token=_token(args), timeout=args.timeout, on_state=_report_state)
    try:
        await client.connect()
        for channel in args.channels:
            await client.subscribe(channel, handler)
        printed = 0
        while args.count is None or printed < args.count:
            getter = asyncio.ensure_future(queue.get())
            stopped = asyncio.ensure_future(client.wait_stopped())
            done, _ = await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                raise stopped.result()
            stopped.cancel()
            event = getter.result()
            if isinstance(event, Subscribed):
                print(f"kizuna sub: {_describe(event)}", file=sys.stderr, flush=True)
                continue
            sys.stdout.buffer.write(_publication_line(event) + b"\n")
            sys.stdout.flush()
            printed += 1
    except ServerRejected as exc:
        return _fail("sub", str(exc), 1)
    except Disconnected as exc:
        return _fail("sub", f"disconnected: {exc}", 1)
    finally:
        await client.close()
    return 0


def run_sub(args: argparse.Namespace) -> int:
    return asyncio.run(_sub(args))


# --- pub -----------------------------------------------------------------------------------------


async def _pub(args: argparse.Namespace, data: Any) -> int:
    client = Client(_urls(args), token=_token(args), timeout=args.timeout, backoff=_PUB_BACKOFF)
    try:
        async with asyncio.timeout(args.timeout):
            await client.connect()
            position = await client.publish(
                args.channel, data, idempotency_key=args.idempotency_key
            )
    except ServerRejected as exc:
        return _fail("pub", str(exc), 1)
    except (ClientError, TimeoutError) as exc:
        return _fail("pub", f"not published: {exc or 'timed out'}", 1)
    finally:
        await client.close()
    result = {"offset": position.offset, "epoch": position.epoch} if position else {}
    print(orjson.dumps(result).decode(), flush=True)
    return 0


def run_pub(args: argparse.Namespace) -> int:
    raw = sys.stdin.read() if args.data == "-" else args.data
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _fail("pub", f"DATA is not JSON ({exc}); quote strings: '\"hello\"'", 2)
    return asyncio.run(_pub(args, data))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kizuna", description="kizuna client commands")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
