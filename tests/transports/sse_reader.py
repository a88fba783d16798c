"""Read an SSE stream incrementally over a real HTTP connection (httpx), event by event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """Yield events as their blank line arrives; comments (heartbeats) as event ':'."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Event(":", line[1:].strip(), None)
        elif line == "":
            if fields:
                yield Event(
                    fields.get("event", "message"), orjson.loads(fields["data"]), fields.get("id")
                )
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


async def collect(
    stream: AsyncIterator[Event], kinds: set[str], count: int, timeout: float = 5
) -> list[Event]:
    """The next ``count`` events whose kind is in ``kinds`` (others are skipped)."""
    out: list[Event] = []

    async def run() -> None:
        async for event in stream:
            if event.event in kinds:
                out.append(event)
                if len(out) >= count:
                    return

    await asyncio.wait_for(run(), timeout)
    return out
