"""Pipelined publishes (core/client.py): overlapping, yet answered and applied in order.

The broker here is the memory broker made to behave like the Redis one: it
declares ``pipelines_publishes``, records each publish when it is called (its
place in the order) and answers only when the test says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from kizuna.broker.memory import MemoryBroker
from kizuna.core.client import MAX_PIPELINED_PUBLISHES, Client, ClientState
from kizuna.core.events import NoTracer
from kizuna.core.ports import PublishOptions
from kizuna.exceptions import BrokerUnavailable
from kizuna.protocol.codes import DisconnectCode
from kizuna.protocol.messages import Publication, StreamPosition
from tests.core.test_node import RecordingTransport, cmd, connected, make_node, settle


class HeldBroker(MemoryBroker):
    """A memory broker whose publishes wait for :meth:`answer`, like Redis replies."""

    pipelines_publishes = True

    def __init__(self) -> None:
        super().__init__()
        self.called: list[Any] = []
        self.gates: list[asyncio.Future[BaseException | None]] = []

    async def publish(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        return await self.publish_nowait(channel, pub, options)

    def publish_nowait(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> asyncio.Future[StreamPosition]:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[BaseException | None] = loop.create_future()
        position: asyncio.Future[StreamPosition] = loop.create_future()
        self.called.append(orjson.loads(pub.data))
        self.gates.append(gate)

        def opened(gate: asyncio.Future[BaseException | None]) -> None:
            failure = gate.result()
            if failure is not None:
                position.set_exception(failure)
            else:
                position.set_result(self._publish(channel, pub, options))

        gate.add_done_callback(opened)
        return position

    def answer(self, *indexes: int, failure: BaseException | None = None) -> None:
        for i in indexes or range(len(self.gates)):
            if not self.gates[i].done():
                self.gates[i].set_result(failure)


def ids(transport: Any) -> list[int]:
    return [m["id"] for m in transport.messages() if "id" in m and m["id"] > 1]


async def held_client(**node_options: Any) -> tuple[HeldBroker, Client, RecordingTransport]:
    """A connected client on a node whose broker answers only when told to."""
    broker = HeldBroker()
    client, transport = await connected(await make_node(broker, **node_options))
    return broker, client, transport


async def publish(client: Client, count: int, channel: str = "chat:a") -> None:
    """``count`` publishes of 0, 1, ..., with command ids 10, 11, ..."""
    for i in range(count):
        await client.handle_frame(cmd(10 + i, "publish", channel=channel, data=i))


async def test_publishes_reach_the_broker_before_any_reply_and_are_answered_in_order() -> None:
    broker, client, transport = await held_client()
    await publish(client, 5)
    await settle()
    assert broker.called == [0, 1, 2, 3, 4]  # all handed over, in order, none answered
    broker.answer(3, 1)
    await settle()
    assert ids(transport) == []  # 0 is not answered: nothing may overtake it
    broker.answer(0)
    await settle()
    assert ids(transport) == [10, 11]
    broker.answer()
    await settle()
    assert ids(transport) == [10, 11, 12, 13, 14]


async def test_another_command_waits_for_the_publishes_before_it() -> None:
    broker, client, transport = await held_client()
    await publish(client, 3)
    history = asyncio.ensure_future(client.handle_frame(cmd(20, "history", channel="chat:a")))
    await settle()
    assert not history.done()  # the barrier: the inbox reads nothing more meanwhile
    broker.answer()
    await history
    await settle()
    assert ids(transport) == [10, 11, 12, 20]
    pubs = transport.reply(20)["result"]["publications"]
    assert [p["data"] for p in pubs] == [0, 1, 2]


async def test_at_most_max_publishes_are_unanswered() -> None:
    broker, client, transport = await held_client()
    await publish(client, MAX_PIPELINED_PUBLISHES, "live:a")
    one_more = asyncio.ensure_future(
        client.handle_frame(cmd(9999, "publish", channel="live:a", data="last"))
    )
    await settle()
    assert not one_more.done()
    assert len(broker.called) == MAX_PIPELINED_PUBLISHES
    broker.answer(0)
    await one_more
    await settle()
    assert broker.called[-1] == "last"
    broker.answer()
    await settle()
    assert ids(transport) == [*range(10, 10 + MAX_PIPELINED_PUBLISHES), 9999]


async def test_broker_failures_answer_113_in_their_place() -> None:
    broker, client, transport = await held_client()
    await publish(client, 3)
    await settle()
    broker.answer(1, failure=BrokerUnavailable("down"))
    broker.answer()
    await settle()
    assert ids(transport) == [10, 11, 12]
    codes = [transport.reply(10 + i).get("error", {}).get("code") for i in range(3)]
    assert codes == [None, 113, None]


async def test_command_rate_still_applies_to_pipelined_publishes() -> None:
    # The connect took one token of the burst.
    broker, client, transport = await held_client(command_rate=1, command_burst=3)
    frame = b"\n".join(cmd(i, "publish", channel="live:a", data=i) for i in range(2, 8))
    handled = asyncio.ensure_future(client.handle_frame(frame))
    await settle()
    assert broker.called == [2, 3]
    broker.answer()
    await handled
    await settle()
    codes = [m.get("error", {}).get("code") for m in transport.messages() if m.get("id", 1) > 1]
    assert codes == [None, None, 111, 111, 111]
    assert transport.closed is not None
    assert transport.closed[0] == DisconnectCode.TOO_MANY_REQUESTS
    assert client.state is ClientState.CLOSED


async def test_a_polite_close_answers_the_publishes_under_way_first() -> None:
    broker, client, transport = await held_client()
    await publish(client, 3)
    closing = asyncio.ensure_future(client.close(DisconnectCode.SHUTDOWN, flush=True))
    await settle()
    assert not closing.done()
    broker.answer()
    await closing
    assert ids(transport) == [10, 11, 12]
    assert transport.closed is not None and transport.closed[0] == DisconnectCode.SHUTDOWN


@pytest.mark.parametrize(("tracer", "tasks_per_publish"), [(None, 0), (NoTracer(), 1)])
async def test_a_pipelined_publish_runs_in_a_task_only_when_traced(
    tracer: NoTracer | None, tasks_per_publish: int
) -> None:
    """Node.publish_nowait: a future and a callback per publish, no coroutine in a task;
    spans need the coroutine, so with a tracer each publish runs in a task of its own."""
    broker, client, transport = await held_client(tracer=tracer)
    await settle()
    before = len(asyncio.all_tasks())
    await publish(client, 5)
    await settle()
    assert broker.called == [0, 1, 2, 3, 4]
    assert len(asyncio.all_tasks()) == before + 5 * tasks_per_publish
    broker.answer(2, 0, 4, 1, 3)
    await settle()
    assert ids(transport) == [10, 11, 12, 13, 14]
    assert all("offset" in transport.reply(10 + i)["result"] for i in range(5))
