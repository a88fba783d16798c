"""The WebSocket upgrade: taken as httptools parsed it, and refused when it is malformed.

kizuna's HTTP protocol hands the upgrade request to the WebSocket protocol as the
``websockets`` library's Request instead of bytes to parse again
(``handshake_request``). That shortcut must accept exactly what ``websockets``
would parse, and answer what it would not: through uvicorn's own way such a
request got no answer at all, kept its socket until the peer left, and then made
the server's shutdown fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any

import httptools
import pytest
import websockets
from websockets.exceptions import RequestLineTooLong
from websockets.http11 import Request
from websockets.streams import StreamReader

from kizuna.core.auth import mint_token
from kizuna.transports.websocket_protocol import (
    DetachableWebSocketProtocol,
    RefusedHandshake,
    handshake_request,
)
from tests.support.inprocess import serving
from tests.support.processes import JWT_SECRET

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(
    extra: str = "", *, method: str = "GET", target: str = "/connection/websocket"
) -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


class _Parsed:
    """What uvicorn's httptools protocol keeps of a request: method, target, headers."""

    def __init__(self, raw: bytes) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        parser = httptools.HttpRequestParser(self)
        with pytest.raises(httptools.HttpParserUpgrade):
            parser.feed_data(raw)
        self.method = parser.get_method().decode("ascii")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))  # as uvicorn's on_header


def websockets_parse(raw: bytes) -> Request:
    """The request as ``websockets`` parses it from the bytes (raises what it raises)."""
    reader = StreamReader()
    reader.feed_data(raw)
    parser: Generator[None, None, Request] = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("websockets wanted more bytes")


@pytest.mark.parametrize(
    "raw",
    [
        upgrade(),
        upgrade(target="/connection/websocket?token=a.b.c&x=%20y"),
        upgrade("Content-Length: 0\r\nOrigin: http://127.0.0.1\r\n"),
        upgrade("X-Obs-Text: caf\xe9\r\nX-Tab: a\tb\r\n"),
        upgrade("Sec-WebSocket-Protocol: a, b\r\nSec-WebSocket-Protocol: c\r\n"),
        upgrade("".join(f"X-H{i}: {i}\r\n" for i in range(128 - 5))),
        upgrade(method="POST"),  # websockets parses it, and then refuses it with 405
    ],
)
def test_the_request_is_what_websockets_would_parse(raw: bytes) -> None:
    parsed = _Parsed(raw)
    ours = handshake_request(parsed.method, parsed.url, parsed.headers)
    theirs = websockets_parse(raw)
    assert isinstance(ours, Request)
    assert (ours.method, ours.path) == (theirs.method, theirs.path)
    ours_headers = [(k.lower(), v) for k, v in ours.headers.raw_items()]
    assert ours_headers == [(k.lower(), v) for k, v in theirs.headers.raw_items()]


REFUSED = {
    "transfer coding": (upgrade("Transfer-Encoding: chunked\r\n"), 400),
    "a body": (upgrade("Content-Length: 5\r\n"), 400),
    "too many headers": (upgrade("".join(f"X-H{i}: v\r\n" for i in range(130))), 431),
    "a header line too long": (upgrade("X-Long: " + "a" * 9000 + "\r\n"), 431),
    "a request line too long": (upgrade(target="/connection/websocket?x=" + "a" * 9000), 414),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_websockets_refuses_what_kizuna_refuses(name: str) -> None:
    raw, status = REFUSED[name]
    parsed = _Parsed(raw)
    refused = handshake_request(parsed.method, parsed.url, parsed.headers)
    assert refused == RefusedHandshake(status, refused.reason)  # type: ignore[union-attr]
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever of its errors websockets raises
        websockets_parse(raw)


@pytest.mark.parametrize("line_length", [8192, 8193])
def test_the_request_line_limit_is_websockets_own_to_the_byte(line_length: int) -> None:
    """A request line of 8,192 bytes with its CRLF passes; one more byte is 414."""
    padding = line_length - len("GET /connection/websocket?x= HTTP/1.1\r\n")
    raw = upgrade(target="/connection/websocket?x=" + "a" * padding)
    assert raw.index(b"\r\n") + 2 == line_length
    parsed = _Parsed(raw)
    ours = handshake_request(parsed.method, parsed.url, parsed.headers)
    if line_length <= 8192:
        assert isinstance(ours, Request)
        assert ours.path == websockets_parse(raw).path
    else:
        assert ours == RefusedHandshake(414, "the request line is too long")
        with pytest.raises(RequestLineTooLong):
            websockets_parse(raw)


def test_invalid_header_values_are_refused() -> None:
    assert handshake_request("GET", b"/", [(b"x-a", b"bell\x07")]) == RefusedHandshake(
        400, "invalid header"
    )
    assert handshake_request("GET", b"/", [(b"x a", b"v")]) == RefusedHandshake(
        400, "invalid header"
    )
    assert handshake_request("GET", "/é".encode(), []) == RefusedHandshake(
        400, "the request target is not ASCII"
    )


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes the socket (fails after 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_malformed_upgrades_are_answered_and_closed_and_the_server_goes_on() -> None:
    async with serving() as (_, port):
        for name, (raw, status) in REFUSED.items():
            answer = await _exchange(port, raw)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (name, answer[:80])
            assert b"Failed to open a WebSocket connection: " in answer, name
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        async with websockets.connect(url) as ws:
            await ws.send(f'{{"id":1,"method":"connect","params":{{"token":"{_token()}"}}}}')
            assert '"id":1' in str(await asyncio.wait_for(ws.recv(), 5))
    # serving() has shut the server down without an error: it used to fail on such sockets


def _token() -> str:
    return mint_token(JWT_SECRET, "alice")


async def test_a_handshake_takes_the_parsed_request_not_a_second_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[str] = []
    original = DetachableWebSocketProtocol.take_over

    def counting(
        self: DetachableWebSocketProtocol, transport: Any, request: Request, *a: Any
    ) -> None:
        taken.append(request.path)
        original(self, transport, request, *a)
        assert self.client == transport.get_extra_info("peername")
        assert self.server == transport.get_extra_info("sockname")
        assert self.scheme == "ws"

    monkeypatch.setattr(DetachableWebSocketProtocol, "take_over", counting)
    async with serving() as (_, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket?x=1"
        async with websockets.connect(url) as ws:
            await ws.send(f'{{"id":1,"method":"connect","params":{{"token":"{_token()}"}}}}')
            assert '"id":1' in str(await asyncio.wait_for(ws.recv(), 5))
    assert taken == ["/connection/websocket?x=1"]


async def test_a_refused_origin_is_not_logged_as_an_unanswered_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as (_, port):
        with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
            answer = await _exchange(port, upgrade("Origin: http://evil.example\r\n"))
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"] == []
