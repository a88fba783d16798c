"""Content with Unicode line separators reaches line-splitting SSE readers intact.

orjson writes U+2028, U+2029 and U+0085 raw inside JSON strings. The SSE spec
ends a line only at CR, LF or CRLF, so browsers' EventSource and the npm
``eventsource`` package read such data correctly (the interop test shows it).
But Python readers built on ``str.splitlines`` — httpx's ``aiter_lines``, hence
httpx-sse's ``aiter_sse`` before its own line decoder, and this repository's
``tests/transports/sse_reader.py`` — cut the ``data:`` line there and get
invalid JSON. A chat message containing U+2028 (pasted from a word processor)
then breaks those subscribers, while every other transport carries it.

The test reads with the repository's reader; it passes once either the reader
splits lines as the spec says, or the SSE edge writes these three characters
as JSON escapes (``\\u2028``), which every JSON parser reads back unchanged.
"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.clients import token
from tests.grpc.conftest import GrpcNode
from tests.interop.subscribers import TIMEOUT
from tests.support.processes import API_KEY
from tests.transports.sse_reader import collect, events


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
async def test_sse_reader_gets_content_with_a_unicode_line_separator(
    one_node: list[GrpcNode], uid: str, separator: str
) -> None:
    [node] = one_node
    channel = f"chat:separators-{uid}"
    text = f"before{separator}after"
    async with httpx.AsyncClient(base_url=node.url, timeout=TIMEOUT, trust_env=False) as http:
        url = "/connection/sse"
        params = {"channels": channel, "token": token("reader")}
        async with http.stream("GET", url, params=params) as response:
            stream = events(response)
            await collect(stream, {"join"}, 1)  # its own join: subscribed
            published = await http.post(
                "/api/publish",
                json={"channel": channel, "data": {"content": text}},
                headers={"Authorization": f"apikey {API_KEY}"},
            )
            assert published.status_code == 200, published.text
            try:
                [event] = await collect(stream, {"pub"}, 1, timeout=TIMEOUT)
            except ValueError as exc:  # orjson.JSONDecodeError: half a data line
                pytest.fail(f"the data line was cut at {separator!r}: {exc}")
            assert event.data["data"] == {"content": text}
