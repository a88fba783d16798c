"""The asyncio client: one WebSocket connection kept alive, and the subscriptions on it.

Life of a client
----------------
1. :meth:`Client.connect` starts the connection loop and waits until the
   first connection is up (or the client stopped for good).
2. Each attempt (a *session*): open the WebSocket, send ``connect`` with the
   token, then subscribe every registered channel again — each from the
   position of the last publication it delivered, so the server replays
   exactly what was missed or says it cannot (``gap``). Commands the
   application sent while the client was away wait for this moment.
3. When the connection ends, decide from the close code (see
   ``kizuna.protocol.codes``):

   * 4xxx, or a ``disconnect`` push with ``reconnect: false``: stop
     (terminal); a 4002 with a token callback is the exception: get a new
     token and try again;
   * an expired or invalid token (3006, error 109 or 101 to ``connect``): ask
     the token callback for a new token, then reconnect;
   * anything else (a dropped connection, a node shutting down, a heartbeat
     that went unanswered, a malformed frame): reconnect after a backoff
     delay (:mod:`kizuna.client.backoff`). The failure count resets once a
     connection stayed up ``stable_after`` seconds.

4. :meth:`Client.close` ends everything; subscriptions' iterators finish.

One connection's state (commands in flight, how it closed) lives in
``session.py``; where tokens come from, and the rule that a refused token is
never sent again, in ``tokens.py``.

Order is the invariant that makes recovery exact: the reader handles each
frame's messages in wire order and synchronously — a subscribe reply carrying
recovered publications is applied to its subscription before the live
publications that follow it in the same frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from kizuna.client import frames
from kizuna.client.backoff import Backoff
from kizuna.client.errors import (
    ClientError,
    ConnectionLost,
    Disconnected,
    MalformedFrame,
    ServerRejected,
)
from kizuna.client.events import (
    ConnectionState,
    HistoryPage,
    Join,
    Leave,
    PresenceCounts,
    Publication,
    StateChange,
    Unsubscribed,
)
from kizuna.client.session import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    NotSent,
    Outcome,
    Session,
    ignore,
)
from kizuna.client.subscription import Handler, Subscription, SubscriptionState
from kizuna.client.tokens import TokenCallback, TokenRefused, TokenSource
from kizuna.protocol.codes import DisconnectCode, ErrorCode, reconnect_allowed
from kizuna.protocol.messages import ClientInfo, StreamPosition

__all__ = ["Client", "TokenCallback"]

log = logging.getLogger("kizuna.client")

StateCallback = Callable[[StateChange], None]

_T = TypeVar("_T")

# Error replies after which a subscribe is tried again on the same connection.
_TRANSIENT_ERRORS = frozenset(
    {ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS, ErrorCode.BROKER_UNAVAILABLE}
)
# Error replies to connect that a new token can fix, and the close code each stands for.
_AUTH_ERRORS: dict[int, DisconnectCode] = {
    ErrorCode.UNAUTHORIZED: DisconnectCode.UNAUTHORIZED,
    ErrorCode.TOKEN_EXPIRED: DisconnectCode.TOKEN_EXPIRED,
}


class Client:
    """A kizuna client over the native WebSocket protocol.

    ``url`` is ``ws://host:port/connection/websocket``, or a list of such URLs
    (nodes of one cluster): each new attempt after a failure tries the next.
    Authenticate with ``token``, or ``get_token`` (called when there is no
    token yet, and whenever the server reports it expired or invalid), or
    both. Every timing is in seconds.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: TokenCallback | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
        stable_after: float = 5.0,
        timeout: float = 10.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_message_size: int | None = 16 * 1024 * 1024,
        headers: Mapping[str, str] | None = None,
        refresh_ratio: float = 0.8,
        on_state: StateCallback | None = None,
        rng: random.Random | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL is required")
        if not 0 < refresh_ratio <= 1:
            raise ValueError("refresh_ratio must be in (0, 1]")
        self.urls = urls
        self.name = name
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.timeout = timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_message_size = max_message_size
        self.headers = dict(headers or {})
        self.refresh_ratio = refresh_ratio
        self.state = ConnectionState.DISCONNECTED
        self.client_id: str | None = None
        self._tokens = TokenSource(token, get_token)
        self._on_state = on_state
        self._rng = rng
        self._subs: dict[str, Subscription] = {}
        self._session: Session | None = None
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._stopped: Disconnected | None = None
        self._closing = False
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Start connecting; return once connected. Raises Disconnected if it stops for good.

        Transient failures are retried with backoff and do not raise: wrap
        the call in ``asyncio.timeout()`` to bound the wait.
        """
        if self._stopped is not None:
            raise self._stopped
        if self._run_task is None:
            self._first = asyncio.get_running_loop().create_future()
            self._run_task = asyncio.get_running_loop().create_task(self._run())
        assert self._first is not None
        await asyncio.shield(self._first)

    async def close(self) -> None:
        """Close the connection and end every subscription. Idempotent."""
        if self._closing:
            if self._run_task is not None:
                await asyncio.wait([self._run_task])
            return
        self._closing = True
        self._wake.set()
        session = self._session
        if session is not None:
            session.local_close = Outcome(CLOSE_NORMAL, "client closed", reconnect=False)
            await session.ws.close(CLOSE_NORMAL, "client closed")
        elif self._run_task is not None:
            self._run_task.cancel()  # opening a socket, fetching a token or waiting to retry
        if self._run_task is not None:
            await asyncio.wait([self._run_task])
        else:
            self._stop(Outcome(CLOSE_NORMAL, "client closed", reconnect=False))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(s.drained() for s in list(self._subs.values())))

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_stopped(self) -> Disconnected:
        """Wait until the client stops for good (terminal code, gave up, or closed); say why."""
        if self._run_task is None:
            raise ClientError("call connect() first")
        await asyncio.wait([self._run_task])
        assert self._stopped is not None
        return self._stopped

    @property
    def stopped(self) -> Disconnected | None:
        """Why the client stopped for good, or None while it is running (or never ran)."""
        return self._stopped

    # --- commands ----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        handler: Handler | None = None,
        *,
        since: StreamPosition | None = None,
    ) -> Subscription:
        """Subscribe to ``channel`` and return once the server accepted it.

        ``handler`` is called with each event (it may be a coroutine
        function); without it, iterate the returned subscription. ``since``
        recovers what was published after that position (from an earlier run).
        Raises ServerRejected (and registers nothing) if the server refuses.
        """
        if self._stopped is not None:
            raise self._stopped
        if self._run_task is None:
            raise ClientError("call connect() first")
        if channel in self._subs:
            raise ClientError(f"already subscribed to {channel!r}")
        sub = Subscription(self, channel, handler, since)
        self._subs[channel] = sub
        session = self._session
        if session is not None and session.client_id is not None:
            await self._send_subscribe(session, sub)
        # else: the session that connects next sends it
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(sub.ready)
        except BaseException:
            if self._subs.get(channel) is sub:
                del self._subs[channel]
            sub.end(None, None)
            raise
        return sub

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; its subscription ends with an Unsubscribed(code=0) event."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        was_subscribed = sub.state is SubscriptionState.SUBSCRIBED
        sub.end(None, Unsubscribed(channel, 0, "unsubscribed by the application"))
        session = self._session
        if was_subscribed and session is not None and self._connected.is_set():
            with contextlib.suppress(ServerRejected, ConnectionLost, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await session.request("unsubscribe", {"channel": channel}, ignore)

    def subscription(self, channel: str) -> Subscription | None:
        return self._subs.get(channel)

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> StreamPosition | None:
        """Publish ``data`` (any JSON value); returns its position when the channel keeps history.

        Waits for a connection (up to ``timeout``). Raises ServerRejected,
        ConnectionLost (outcome unknown: retry with the same idempotency_key),
        TimeoutError, or Disconnected.
        """
        params: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key is not None:
            params["idempotency_key"] = idempotency_key
        return await self._call("publish", params, frames.parse_publish_result)

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """Publications in ``channel``'s history, oldest first (newest first if ``reverse``)."""
        params: dict[str, Any] = {"channel": channel, "reverse": reverse}
        if limit is not None:
            params["limit"] = limit
        if since is not None:
            params["since"] = {"offset": since.offset, "epoch": since.epoch}
        return await self._call(
            "history", params, lambda r: frames.parse_history_result(r, channel)
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to ``channel`` now: connection id → (user, connection)."""
        return await self._call("presence", {"channel": channel}, frames.parse_presence_result)

    async def presence_stats(self, channel: str) -> PresenceCounts:
        return await self._call(
            "presence_stats", {"channel": channel}, frames.parse_presence_stats_result
        )

    async def ping(self) -> float:
        """Round-trip time of a ping command, in seconds."""
        started = time.perf_counter()
        await self._call("ping", {}, ignore)
        return time.perf_counter() - started

    async def _call(
        self, method: str, params: dict[str, Any], parse: Callable[[frames.Obj], _T]
    ) -> _T:
        async with asyncio.timeout(self.timeout):
            while True:
                if self._stopped is not None:
                    raise self._stopped
                session = self._session
                if self._connected.is_set() and session is not None:
                    try:
                        result: _T = await session.request(method, params, parse)
                    except NotSent:
                        self._connected.clear()
                        continue  # wait for the next connection
                    return result
                if self._run_task is None:
                    raise ClientError("call connect() first")
                waiter = asyncio.ensure_future(self._connected.wait())
                try:
                    await asyncio.wait(
                        [waiter, self._run_task], return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()

    # --- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        auth_failures = 0
        index = 0
        outcome = Outcome(CLOSE_ABNORMAL, "not connected")
        try:
            while not self._closing:
                url = self.urls[index % len(self.urls)]
                self._set_state(ConnectionState.CONNECTING, url=url, attempt=failures)
                outcome = await self._attempt(url)
                if self._closing:
                    break
                if outcome.stable:
                    failures = 0
                if not outcome.reconnect:
                    break
                if outcome.auth_failed:
                    auth_failures += 1
                else:
                    auth_failures = 0
                if self.backoff.gives_up(failures + 1):
                    outcome.reconnect = False
                    outcome.reason = f"{outcome.reason} (gave up after {failures + 1} attempts)"
                    break
                # The first retry with a fresh token needs no wait; after that, back off —
                # unless the server advised a delay (a draining node spreads its clients).
                if outcome.delay is not None:
                    delay = outcome.delay
                elif auth_failures == 1:
                    delay = 0.0
                else:
                    delay = self.backoff.delay(failures, self._rng)
                failures += 1
                if self.client_id is None or not outcome.stable:
                    index += 1  # the node failed us: try the next one
                self._set_state(
                    ConnectionState.DISCONNECTED,
                    code=outcome.code,
                    reason=outcome.reason,
                    reconnect=True,
                    delay=delay,
                    error=outcome.error,
                )
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            if self._closing:
                outcome = Outcome(CLOSE_NORMAL, "client closed", reconnect=False)
            self._stop(outcome)

    def _stop(self, outcome: Outcome) -> None:
        stopped = Disconnected(outcome.code, outcome.reason)
        self._stopped = stopped
        self._connected.clear()
        self._set_state(
            ConnectionState.DISCONNECTED,
            code=outcome.code,
            reason=outcome.reason,
            reconnect=False,
            error=outcome.error,
        )
        # The application closing ends iterators quietly; anything else raises in them.
        error = None if outcome.code == CLOSE_NORMAL else stopped
        for sub in list(self._subs.values()):
            sub.end(error, None)
        if self._first is not None and not self._first.done():
            self._first.set_exception(stopped)
            self._first.exception()  # retrieved: connect() may not be waiting

    async def _attempt(self, url: str) -> Outcome:
        """One session, from opening the socket to its end. Never raises (but CancelledError)."""
        try:
            token = await self._tokens.for_connect()
        except TokenRefused as exc:
            return Outcome(int(DisconnectCode.UNAUTHORIZED), str(exc), reconnect=False)
        except Exception as exc:
            reason = f"token callback failed: {exc!r}"
            return Outcome(int(DisconnectCode.TOKEN_EXPIRED), reason, error=exc)
        try:
            ws = await ws_connect(
                url,
                additional_headers=self.headers or None,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                max_size=self.max_message_size,
                compression=None,
                user_agent_header="kizuna-python",
            )
        except InvalidStatus as exc:
            return self._refused(exc, token)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return Outcome(CLOSE_ABNORMAL, f"cannot connect to {url}: {exc}", error=exc)
        session = Session(ws, url)
        self._session = session
        reader = asyncio.get_running_loop().create_task(self._read(session))
        try:
            return await self._serve(session, reader, token)
        finally:
            self._session = None
            self._connected.clear()
            self.client_id = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            session.fail_pending()
            for sub in self._subs.values():
                sub.on_connection_lost()

    async def _serve(
        self, session: Session, reader: asyncio.Task[None], token: str | None
    ) -> Outcome:
        """Steps 2 and 3 of the module docstring, on an open socket."""
        params: dict[str, Any] = {}
        if token:
            params["token"] = token
        if self.name:
            params["name"] = self.name
        try:
            async with asyncio.timeout(self.timeout):
                result = await session.request("connect", params, frames.parse_connect_result)
        except ServerRejected as exc:
            code = _AUTH_ERRORS.get(exc.code)
            if code is not None:
                session.local_close = self._auth_failed(int(code), f"connect: {exc}", token)
            else:
                reason = f"connect: {exc}"
                session.local_close = Outcome(int(DisconnectCode.SERVER_ERROR), reason, error=exc)
            await session.ws.close(CLOSE_NORMAL, "connect rejected")
            return await self._session_end(session, reader)
        except TimeoutError as exc:
            if session.local_close is None:
                reason = f"no answer to connect within {self.timeout} s"
                session.local_close = Outcome(CLOSE_ABNORMAL, reason, error=exc)
            await session.ws.close(CLOSE_NORMAL, "connect timed out")
            return await self._session_end(session, reader)
        except (ConnectionLost, MalformedFrame):  # the reader has the reason
            return await self._session_end(session, reader)

        loop = asyncio.get_running_loop()
        session.client_id = self.client_id = result.client
        session.connected_at = loop.time()
        self._set_state(ConnectionState.CONNECTED, url=session.url, client_id=result.client)
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        refresher = None
        if result.ttl is not None and self._tokens.can_refresh:
            refresher = loop.create_task(self._refresh_loop(session, result.ttl))
        try:
            for sub in list(self._subs.values()):
                if sub.state is SubscriptionState.SUBSCRIBING:
                    await self._send_subscribe(session, sub)
            if session.is_open:
                self._connected.set()
            outcome = await self._session_end(session, reader)
        finally:
            if refresher is not None:
                refresher.cancel()
        outcome.stable = loop.time() - session.connected_at >= self.stable_after
        return outcome

    async def _session_end(self, session: Session, reader: asyncio.Task[None]) -> Outcome:
        """Wait for the reader to finish, then say how the session ended."""
        await asyncio.wait([reader])
        if session.local_close is not None:
            return session.local_close
        code, reason = session.close_code()
        return self._classify(code, reason, reconnect=True)

    def _classify(self, code: int, reason: str, *, reconnect: bool) -> Outcome:
        """The decision for a server close code (or a disconnect push)."""
        if code in (DisconnectCode.UNAUTHORIZED, DisconnectCode.TOKEN_EXPIRED):
            return self._auth_failed(code, reason, self._tokens.current)
        return Outcome(code, reason, reconnect=reconnect and reconnect_allowed(code))

    def _auth_failed(self, code: int, reason: str, token: str | None) -> Outcome:
        """The token was refused: with a callback, get another and retry; without, stop."""
        if not self._tokens.refused(token):
            return Outcome(code, reason, reconnect=False)
        return Outcome(code, reason, auth_failed=True)

    def _refused(self, exc: InvalidStatus, token: str | None) -> Outcome:
        """The server answered the handshake with an HTTP error instead of 101."""
        response = exc.response
        detail = response.body.decode("utf-8", "replace")[:200] if response.body else ""
        reason = f"handshake refused: HTTP {response.status_code} {detail}".strip()
        if response.status_code == 401:
            return self._auth_failed(int(DisconnectCode.UNAUTHORIZED), reason, token)
        if response.status_code == 403:
            return Outcome(int(DisconnectCode.FORBIDDEN), reason, reconnect=False, error=exc)
        return Outcome(CLOSE_ABNORMAL, reason, error=exc)

    async def _refresh_loop(self, session: Session, ttl: int) -> None:
        """Refresh the token before it expires, so the connection never has to drop."""
        failures = 0
        wait = ttl * self.refresh_ratio
        while True:
            await asyncio.sleep(wait)
            try:
                token = await self._tokens.fresh()
                if token is None:
                    # Nothing new to offer: let it expire; the server closes with 3006 and
                    # the reconnect asks the callback again (and stops if it has nothing).
                    log.warning("the token callback had no new token; the connection will expire")
                    return
                async with asyncio.timeout(self.timeout):
                    new_ttl = await session.request(
                        "refresh", {"token": token}, frames.parse_refresh_result
                    )
            except ConnectionLost:
                return
            except Exception as exc:  # callback failure, refusal or timeout: try again soon
                log.warning("token refresh failed: %r", exc)
                wait = self.backoff.delay(failures, self._rng)
                failures += 1
                continue
            self._tokens.accepted(token)
            if new_ttl is None:
                return
            failures = 0
            wait = new_ttl * self.refresh_ratio

    # --- reading -----------------------------------------------------------------------

    async def _read(self, session: Session) -> None:
        ws = session.ws
        try:
            async for frame in ws:
                try:
                    self._handle_frame(session, frame)
                except MalformedFrame as exc:
                    log.warning("malformed frame from the server: %s", exc)
                    reason = f"malformed frame from the server: {exc}"
                    session.local_close = Outcome(CLOSE_PROTOCOL_ERROR, reason, error=exc)
                    await ws.close(CLOSE_PROTOCOL_ERROR, "malformed frame")
                    return
                if session.local_close is not None:  # a disconnect push
                    await ws.close(CLOSE_NORMAL)
                    return
        except ConnectionClosed:
            return
        finally:
            self._connected.clear()  # before anyone else sends on this dead socket
            session.fail_pending()

    def _handle_frame(self, session: Session, frame: str | bytes) -> None:
        """Apply one frame's messages in order; raises MalformedFrame before applying any."""
        for message in frames.decode_server_frame(frame):
            if isinstance(message, frames.Reply | frames.ErrorReply):
                session.settle(message)
            elif isinstance(message, Publication):
                sub = self._subs.get(message.channel)
                if (
                    sub is not None
                    and sub.state is SubscriptionState.SUBSCRIBED
                    and not sub.on_publication(message)  # False: past a hole in the stream
                ):
                    self._resync(session, sub)
            elif isinstance(message, Join | Leave):
                sub = self._subs.get(message.channel)
                if sub is not None and sub.state is SubscriptionState.SUBSCRIBED:
                    sub.on_join(message)
            elif isinstance(message, Unsubscribed):
                sub = self._subs.pop(message.channel, None)
                if sub is not None:
                    sub.end(None, message)
            else:  # DisconnectPush
                outcome = self._classify(message.code, message.reason, reconnect=message.reconnect)
                outcome.delay = message.delay
                session.local_close = outcome
                return

    # --- subscribing -------------------------------------------------------------------

    async def _send_subscribe(self, session: Session, sub: Subscription) -> None:
        """Send subscribe for ``sub`` without waiting: the reply is applied by the reader."""
        if sub.sent_in is session:
            return
        sub.sent_in = session
        channel = sub.channel

        def on_result(result: frames.Obj) -> None:
            if self._subs.get(channel) is sub:
                sub.on_subscribed(frames.parse_subscribe_result(result, channel))

        def on_error(error: frames.ErrorReply) -> None:
            if self._subs.get(channel) is not sub:
                return
            if error.code in _TRANSIENT_ERRORS:
                sub.sent_in = None
                delay = self.backoff.delay(sub.retries, self._rng)
                sub.retries += 1
                self._spawn(self._resubscribe_later(session, sub, delay))
                return
            del self._subs[channel]
            rejected = ServerRejected(error.code, error.message)
            if sub.ever_subscribed:
                sub.end(None, Unsubscribed(channel, error.code, error.message))
            else:
                sub.on_rejected(rejected)

        with contextlib.suppress(ConnectionLost):
            await session.send("subscribe", sub.subscribe_params(), on_result, on_error)

    def _resync(self, session: Session, sub: Subscription) -> None:
        """A hole in ``sub``'s stream: subscribe again from its position (recover, or gap)."""
        log.info("hole in %r after %s: subscribing again to recover", sub.channel, sub.position)
        sub.on_connection_lost()  # back to SUBSCRIBING: pushes are ignored until the reply

        async def again() -> None:
            with contextlib.suppress(ConnectionLost):
                await session.send("unsubscribe", {"channel": sub.channel}, ignore)
            if self._session is session and self._subs.get(sub.channel) is sub:
                await self._send_subscribe(session, sub)

        self._spawn(again())

    async def _resubscribe_later(self, session: Session, sub: Subscription, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._session is session and self._subs.get(sub.channel) is sub:
            await self._send_subscribe(session, sub)

    # --- helpers -----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _set_state(self, state: ConnectionState, **fields: Any) -> None:
        self.state = state
        change = StateChange(state, **fields)
        log.debug("state %s", change)
        if self._on_state is not None:
            try:
                self._on_state(change)
            except Exception:
                log.exception("on_state callback failed")
