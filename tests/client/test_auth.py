"""Tokens: the callback supplies them, replaces expired or invalid ones, and can say "stop"."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from kizuna.client import Backoff, Client, ConnectionState, Disconnected, Subscribed
from tests.client.support import (
    FAST_BACKOFF,
    TIMEOUT,
    StateLog,
    next_event,
    seconds_to_expiry,
    token,
)
from tests.support.processes import KizunaProcess

CONNECTING = ConnectionState.CONNECTING
CONNECTED = ConnectionState.CONNECTED
DISCONNECTED = ConnectionState.DISCONNECTED


class Tokens:
    """A token callback that records its calls and hands out what the test queued."""

    def __init__(self, *tokens: str | None, delay: float = 0.0) -> None:
        self.queue = list(tokens)
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> str | None:
        self.calls += 1
        if self.delay and self.calls == 1:
            await asyncio.sleep(self.delay)
        return self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]


def forged(sub: str = "alice") -> str:
    """Well-formed, but signed with a key the server does not know."""
    return jwt.encode({"sub": sub, "exp": time.time() + 3600}, "x" * 32, algorithm="HS256")


async def test_no_token_yet_asks_the_callback(shared_kizuna: KizunaProcess) -> None:
    tokens = Tokens(token("dana"))
    async with Client(shared_kizuna.ws_url, get_token=tokens) as client:
        present = await client.presence_stats("chat:auth-empty")
        assert present.num_clients == 0
        assert tokens.calls == 1


async def test_an_expired_token_is_replaced_through_the_callback(
    shared_kizuna: KizunaProcess,
) -> None:
    log = StateLog()
    tokens = Tokens(token("alice"))
    expired = token("alice", ttl=-10)
    async with Client(shared_kizuna.ws_url, token=expired, get_token=tokens, on_state=log):
        assert tokens.calls == 1
    first, refused, second, connected = (c for _, c in log.changes[:4])
    assert (first.state, second.state, connected.state) == (CONNECTING, CONNECTING, CONNECTED)
    assert (refused.state, refused.code, refused.reconnect, refused.delay) == (
        DISCONNECTED,
        3006,
        True,
        0.0,  # a fresh token is tried at once
    )
    assert "109 token expired" in refused.reason


async def test_the_token_is_refreshed_before_it_expires(shared_kizuna: KizunaProcess) -> None:
    """A 3-second token, refreshed on the open connection: it never drops.

    Not shorter: under a loaded suite a 1-second token could expire before the connect
    reached the server, which tests something else (a refusal at connect)."""
    log = StateLog()
    tokens = Tokens(token("alice", ttl=3600))
    short = token("alice", ttl=3)
    async with Client(shared_kizuna.ws_url, token=short, get_token=tokens, on_state=log) as client:
        sub = await client.subscribe("chat:refresh")
        await asyncio.sleep(seconds_to_expiry(short) + 0.5)  # past the first token's expiry
        await client.publish("chat:refresh", "still here")
        await next_event(sub, Subscribed)
        assert tokens.calls == 1
        assert log.states() == [CONNECTING, CONNECTED]


async def test_expiry_without_a_timely_refresh_reconnects_with_a_new_token(
    shared_kizuna: KizunaProcess,
) -> None:
    """The callback is too slow the first time: the server closes with 3006; the client recovers."""
    log = StateLog()
    tokens = Tokens(token("alice", ttl=3600), delay=2.0)
    short = token("alice", ttl=3)  # refreshed at 0.8 × ttl: the slow callback ends after expiry
    async with Client(
        shared_kizuna.ws_url, token=short, get_token=tokens, on_state=log, backoff=FAST_BACKOFF
    ) as client:
        sub = await client.subscribe("chat:expiry")
        await next_event(sub, Subscribed)
        expired = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert (expired.code, expired.reason, expired.reconnect, expired.delay) == (
            3006,
            "token expired",
            True,
            0.0,
        )
        await log.wait_state(CONNECTED, after=3)
        back = await next_event(sub, Subscribed)
        assert back.resubscribed and back.recovered and not back.gap
        assert tokens.calls == 2


async def test_an_invalid_token_without_callback_is_terminal(shared_kizuna: KizunaProcess) -> None:
    log = StateLog()
    client = Client(shared_kizuna.ws_url, token=forged(), on_state=log, backoff=FAST_BACKOFF)
    with pytest.raises(Disconnected) as stopped:
        await asyncio.wait_for(client.connect(), TIMEOUT)
    assert stopped.value.code == 4002
    assert "101 invalid token" in stopped.value.reason
    assert log.states() == [CONNECTING, DISCONNECTED]
    await client.close()


async def test_an_expired_token_without_callback_is_terminal(shared_kizuna: KizunaProcess) -> None:
    client = Client(shared_kizuna.ws_url, token=token(ttl=-1), backoff=FAST_BACKOFF)
    with pytest.raises(Disconnected) as stopped:
        await asyncio.wait_for(client.connect(), TIMEOUT)
    assert stopped.value.code == 3006
    await client.close()


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ((None,), "the token callback returned no token"),
        (("",), "the token callback returned no token"),
        ((forged(),), "the token callback returned the token just refused"),
    ],
)
async def test_the_callback_can_end_it(
    shared_kizuna: KizunaProcess, answers: tuple[str | None, ...], reason: str
) -> None:
    tokens = Tokens(*answers)
    client = Client(shared_kizuna.ws_url, get_token=tokens, backoff=FAST_BACKOFF)
    with pytest.raises(Disconnected) as stopped:
        await asyncio.wait_for(client.connect(), TIMEOUT)
    assert (stopped.value.code, stopped.value.reason) == (4002, reason)
    await client.close()


async def test_a_callback_that_keeps_minting_bad_tokens_backs_off(
    shared_kizuna: KizunaProcess,
) -> None:
    log = StateLog()
    tokens = Tokens(*(forged(f"user{i}") for i in range(10)))
    policy = Backoff(min_delay=0.05, max_delay=0.2, max_attempts=4)
    client = Client(shared_kizuna.ws_url, get_token=tokens, backoff=policy, on_state=log)
    with pytest.raises(Disconnected) as stopped:
        await asyncio.wait_for(client.connect(), TIMEOUT)
    assert stopped.value.code == 4002
    delays = [c.delay for c in log.of(DISCONNECTED) if c.reconnect]
    assert delays[0] == 0.0  # the first new token is tried at once...
    assert all(d is not None and d >= 0.05 for d in delays[1:])  # ...then it backs off
    assert len(delays) == 3 and tokens.calls == 4
    await client.close()


async def test_a_failing_callback_is_retried_with_backoff(shared_kizuna: KizunaProcess) -> None:
    log = StateLog()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("auth service down")
        return token()

    async with Client(shared_kizuna.ws_url, get_token=flaky, backoff=FAST_BACKOFF, on_state=log):
        failures = log.of(DISCONNECTED)
        assert len(failures) == 2
        assert all("token callback failed" in c.reason and c.reconnect for c in failures)
        assert all(isinstance(c.error, ConnectionError) for c in failures)


async def test_a_callback_with_nothing_new_lets_the_token_expire_then_stops(
    shared_kizuna: KizunaProcess,
) -> None:
    """No busy refresh loop: the same token is not sent again; at expiry the client stops."""
    short = token("alice", ttl=2)  # long enough to be accepted at connect under load
    tokens = Tokens(short)
    log = StateLog()
    client = Client(shared_kizuna.ws_url, token=short, get_token=tokens, on_state=log)
    await client.connect()
    stopped = await asyncio.wait_for(client.wait_stopped(), TIMEOUT)
    assert (stopped.code, stopped.reason) == (
        4002,
        "the token callback returned the token just refused",
    )
    assert tokens.calls == 2  # once to refresh (nothing new), once to reconnect
    expired = log.of(DISCONNECTED)[0]
    assert (expired.code, expired.reason) == (3006, "token expired")
    await client.close()
