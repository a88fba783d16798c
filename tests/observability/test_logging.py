"""JSON log lines from a real server: their fields, trace ids inside spans, no secrets."""

from __future__ import annotations

import asyncio

import orjson
from websockets.asyncio.client import connect

from kizuna.core.auth import mint_token
from tests.support.otlp import OTLPReceiver
from tests.support.processes import JWT_SECRET, KizunaProcess


async def test_json_lines_carry_fields_and_the_active_trace_never_a_token() -> None:
    token = mint_token(JWT_SECRET, "logger")
    with OTLPReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "KIZUNA_LOG_LEVEL": "debug",
        }
        with KizunaProcess(env=env) as server:
            async with connect(server.ws_url) as ws:
                await ws.send(
                    orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}})
                )
                await ws.recv()
                secret = {"channel": "chat:l", "data": {"body": "do-not-log-me"}}
                await ws.send(orjson.dumps({"id": 2, "method": "publish", "params": secret}))
                await ws.recv()
            spans = await asyncio.to_thread(
                receiver.wait_for, lambda s: any(x.name == "connect" for x in s)
            )
            server.stop()
            output = server.output()
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines, output
    for line in lines:
        assert {"timestamp", "level", "service", "event"} <= set(line)
        assert line["service"] == "kizuna"
    [opened] = [line for line in lines if line["event"] == "connection_opened"]
    [connect_span] = [s for s in spans if s.name == "connect"]
    assert opened["trace_id"] == connect_span.trace_id
    assert opened["span_id"] == connect_span.span_id
    assert token not in output
    assert "do-not-log-me" not in output
