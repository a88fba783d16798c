"""Traces leave a real server as OTLP/HTTP and form one trace per message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from websockets.asyncio.client import connect

from kizuna.core.auth import mint_token
from kizuna.observability.tracing import tracing_requested
from tests.support.otlp import OTLPReceiver, ReceivedSpan
from tests.support.processes import JWT_SECRET, KizunaProcess

PRODUCER, CONSUMER, CLIENT, SERVER = 4, 5, 3, 2  # OTLP SpanKind numbers


@pytest.fixture
def traced() -> Iterator[tuple[KizunaProcess, OTLPReceiver]]:
    with OTLPReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "kizuna-test",
        }
        with KizunaProcess(env=env) as server:
            yield server, receiver


async def _roundtrip(url: str) -> None:
    token = mint_token(JWT_SECRET, "tracer")
    async with connect(url) as ws:
        await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
        await ws.recv()
        await ws.send(
            orjson.dumps({"id": 2, "method": "subscribe", "params": {"channel": "chat:t"}})
        )
        await ws.recv()
        publish = {"channel": "chat:t", "data": {"m": 1}}
        await ws.send(orjson.dumps({"id": 3, "method": "publish", "params": publish}))
        seen = b""
        while b'"push":"pub"' not in seen:
            seen += (await asyncio.wait_for(ws.recv(), 5)).encode()


async def test_publish_and_delivery_form_one_trace(
    traced: tuple[KizunaProcess, OTLPReceiver],
) -> None:
    server, receiver = traced
    await _roundtrip(server.ws_url)

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {"connect", "subscribe chat", "publish chat", "broker publish", "deliver chat"} <= {
            s.name for s in spans
        }

    spans = await asyncio.to_thread(receiver.wait_for, complete)
    by_name = {s.name: s for s in spans}
    publish, send, deliver = (
        by_name["publish chat"],
        by_name["broker publish"],
        by_name["deliver chat"],
    )
    assert publish.kind == PRODUCER
    assert send.kind == CLIENT
    assert deliver.kind == CONSUMER
    assert by_name["connect"].kind == SERVER
    assert send.trace_id == deliver.trace_id == publish.trace_id
    assert send.parent_span_id == publish.span_id
    assert deliver.parent_span_id == publish.span_id
    assert publish.attributes["messaging.destination.name"] == "chat:t"
    assert publish.attributes["messaging.system"] == "kizuna"
    assert {s.service for s in spans} == {"kizuna-test"}
    # one fan-out span per node and message, never one per recipient
    assert sum(s.name == "deliver chat" for s in spans) == 1


def test_off_unless_the_environment_asks() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}
    )


async def _subscribe(url: str, channel: str) -> object:
    ws = await connect(url)
    await ws.send(
        orjson.dumps(
            {"id": 1, "method": "connect", "params": {"token": mint_token(JWT_SECRET, "sub")}}
        )
    )
    await ws.recv()
    await ws.send(orjson.dumps({"id": 2, "method": "subscribe", "params": {"channel": channel}}))
    await ws.recv()
    return ws


async def test_one_trace_from_publisher_through_redis_to_every_node(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    with OTLPReceiver() as receiver:
        common = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        a = KizunaProcess(args=["--broker", url], env={**common, "OTEL_SERVICE_NAME": "node-a"})
        b = KizunaProcess(args=["--broker", url], env={**common, "OTEL_SERVICE_NAME": "node-b"})
        with a, b:
            channel = "chat:traced-across"
            subs = [await _subscribe(a.ws_url, channel), await _subscribe(b.ws_url, channel)]
            assert a.api("publish", channel=channel, data={"x": 1}).status_code == 200
            for ws in subs:
                while b'"push":"pub"' not in (await asyncio.wait_for(ws.recv(), 5)).encode():  # type: ignore[attr-defined]
                    pass
                await ws.close()  # type: ignore[attr-defined]

            def delivered_on_both(spans: list[ReceivedSpan]) -> bool:
                return {s.service for s in spans if s.name == "deliver chat"} == {
                    "node-a",
                    "node-b",
                }

            spans = await asyncio.to_thread(receiver.wait_for, delivered_on_both)
    [publish] = [s for s in spans if s.name == "publish chat"]
    assert publish.service == "node-a"
    deliveries = [s for s in spans if s.name == "deliver chat"]
    assert {d.trace_id for d in deliveries} == {publish.trace_id}
    assert {d.parent_span_id for d in deliveries} == {publish.span_id}
    assert len(deliveries) == 2  # one per node, not one per recipient
