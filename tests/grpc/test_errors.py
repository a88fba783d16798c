"""Bad input over gRPC: each refusal is a gRPC status plus kizuna's code; nothing else breaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from kizuna.core.auth import mint_token
from kizuna.protocol.codes import ErrorCode
from kizuna.transports.grpc import CHANNEL_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.grpc.clients import TIMEOUT, error_code, read, rpc_error, subscriptions
from tests.grpc.conftest import GrpcNode, auth, token

Stub = chat_pb2_grpc.ChatServiceStub
Status = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]


async def _no_entries() -> AsyncIterator[chat_pb2.LogEntry]:
    return
    yield


def _each_mode(stub: Stub, metadata: Metadata, uid: str) -> dict[str, object]:
    """One call of each of the four modes, with ``metadata`` and otherwise valid input."""
    channel = f"chat:{uid}"
    return {
        "SendMessage": stub.SendMessage(
            chat_pb2.ChatMessage(channel=channel, content="x"), metadata=metadata
        ),
        "SubscribeMessages": _first(
            stub.SubscribeMessages(
                chat_pb2.SubscriptionRequest(channels=[channel]), metadata=metadata
            )
        ),
        "UploadLogs": stub.UploadLogs(_no_entries(), metadata=metadata),
        "Chat": _first(stub.Chat(metadata=(*metadata, (CHANNEL_KEY, channel)))),
    }


async def _first(call: grpc.aio.Call) -> object:
    """A stream's first message (a refused stream raises its error here)."""
    return await call.read()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        pytest.param((), ErrorCode.UNAUTHORIZED, id="no-token"),
        pytest.param(
            (("authorization", "Bearer not-a-jwt"),), ErrorCode.UNAUTHORIZED, id="garbage"
        ),
        pytest.param(
            (("authorization", f"Basic {token()}"),), ErrorCode.UNAUTHORIZED, id="not-bearer"
        ),
        pytest.param(
            (("authorization", f"Bearer {mint_token('another-secret-' * 3, 'alice')}"),),
            ErrorCode.UNAUTHORIZED,
            id="other-key",
        ),
        pytest.param(auth(ttl=-10), ErrorCode.TOKEN_EXPIRED, id="expired"),
    ],
)
async def test_every_mode_refuses_a_bad_token(
    stub: Stub, uid: str, metadata: Metadata, code: ErrorCode
) -> None:
    for name, call in _each_mode(stub, metadata, uid).items():
        error = await rpc_error(call)  # type: ignore[arg-type]
        assert error.code() is Status.UNAUTHENTICATED, name
        assert error_code(error) == code, name


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [
        pytest.param(
            chat_pb2.ChatMessage(content="no channel"),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="no-channel",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="chat:{uid}"),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="no-content",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="chat:{uid}", content="x", timestamp=-1),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="negative-timestamp",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="c" * 256, content="x"),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="channel-too-long",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="nowhere:{uid}", content="x"),
            Status.NOT_FOUND,
            ErrorCode.UNKNOWN_CHANNEL,
            id="unknown-namespace",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="chat:", content="x"),
            Status.NOT_FOUND,
            ErrorCode.UNKNOWN_CHANNEL,
            id="no-channel-name",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="notifications:{uid}", content="x"),
            Status.PERMISSION_DENIED,
            ErrorCode.PERMISSION_DENIED,
            id="clients-may-not-publish",
        ),
        pytest.param(
            chat_pb2.ChatMessage(user_id="mallory", channel="chat:{uid}", content="x"),
            Status.PERMISSION_DENIED,
            ErrorCode.PERMISSION_DENIED,
            id="someone-elses-user-id",
        ),
        pytest.param(
            chat_pb2.ChatMessage(channel="chat:{uid}", content="x" * 65536),
            Status.RESOURCE_EXHAUSTED,
            ErrorCode.MESSAGE_TOO_LARGE,
            id="too-large",
        ),
    ],
)
async def test_send_message_refuses_bad_input(
    stub: Stub, uid: str, message: chat_pb2.ChatMessage, status: Status, code: ErrorCode
) -> None:
    message.channel = message.channel.replace("{uid}", uid)
    error = await rpc_error(stub.SendMessage(message, metadata=auth()))
    assert error.code() is status
    assert error_code(error) == code


async def test_a_message_past_the_transport_limit_is_refused_by_grpc(stub: Stub, uid: str) -> None:
    message = chat_pb2.ChatMessage(channel=f"chat:{uid}", content="x" * 200_000)
    error = await rpc_error(stub.SendMessage(message, metadata=auth()))
    assert error.code() is Status.RESOURCE_EXHAUSTED


async def test_a_channel_outside_the_token_is_denied(stub: Stub, uid: str) -> None:
    metadata = auth(channels=[f"chat:{uid}-mine"])
    error = await rpc_error(
        stub.SendMessage(
            chat_pb2.ChatMessage(channel=f"chat:{uid}", content="x"), metadata=metadata
        )
    )
    assert (error.code(), error_code(error)) == (Status.PERMISSION_DENIED, 103)
    sub = stub.SubscribeMessages(
        chat_pb2.SubscriptionRequest(channels=[f"chat:{uid}-mine", f"chat:{uid}"]),
        metadata=metadata,
    )
    error = await rpc_error(_first(sub))
    assert (error.code(), error_code(error)) == (Status.PERMISSION_DENIED, 103)


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        pytest.param(
            chat_pb2.SubscriptionRequest(),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="no-channels",
        ),
        pytest.param(
            chat_pb2.SubscriptionRequest(channels=["chat:{uid}", ""]),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="empty-channel",
        ),
        pytest.param(
            chat_pb2.SubscriptionRequest(
                channels=["chat:{uid}"],
                since={"chat:{uid}-other": chat_pb2.StreamPosition(offset=1, epoch="e")},
            ),
            Status.INVALID_ARGUMENT,
            ErrorCode.BAD_REQUEST,
            id="since-for-another-channel",
        ),
        pytest.param(
            chat_pb2.SubscriptionRequest(channels=["chat:{uid}", "nowhere:{uid}"]),
            Status.NOT_FOUND,
            ErrorCode.UNKNOWN_CHANNEL,
            id="unknown-channel",
        ),
        pytest.param(
            chat_pb2.SubscriptionRequest(channels=["chat:{uid}", "chat:{uid}"]),
            Status.ALREADY_EXISTS,
            ErrorCode.ALREADY_SUBSCRIBED,
            id="twice",
        ),
    ],
)
async def test_subscribe_messages_refuses_bad_input(
    stub: Stub, uid: str, request_: chat_pb2.SubscriptionRequest, status: Status, code: ErrorCode
) -> None:
    fixed = chat_pb2.SubscriptionRequest(
        channels=[c.replace("{uid}", uid) for c in request_.channels]
    )
    for channel, position in request_.since.items():
        fixed.since[channel.replace("{uid}", uid)].CopyFrom(position)
    error = await rpc_error(_first(stub.SubscribeMessages(fixed, metadata=auth())))
    assert error.code() is status
    assert error_code(error) == code


async def test_chat_refuses_a_message_without_a_channel_when_it_joined_several(
    stub: Stub, uid: str
) -> None:
    chat = stub.Chat(
        metadata=(*auth(), (CHANNEL_KEY, f"chat:{uid}-a"), (CHANNEL_KEY, f"chat:{uid}-b"))
    )
    assert len(await subscriptions(chat)) == 2
    await chat.write(chat_pb2.ChatMessage(content="where to?"))
    error = await rpc_error(chat.read())
    assert (error.code(), error_code(error)) == (Status.INVALID_ARGUMENT, 107)


async def test_chat_refuses_an_unknown_channel_to_join(stub: Stub, uid: str) -> None:
    chat = stub.Chat(metadata=(*auth(), (CHANNEL_KEY, f"nowhere:{uid}")))
    error = await rpc_error(chat.read())
    assert (error.code(), error_code(error)) == (Status.NOT_FOUND, 102)


async def test_a_refused_call_leaves_other_clients_alone(
    stub: Stub, grpc_node: GrpcNode, uid: str
) -> None:
    """A Chat stream ended by a bad message; a subscriber beside it keeps receiving."""
    room = f"chat:{uid}"
    listener = stub.SubscribeMessages(
        chat_pb2.SubscriptionRequest(channels=[room]), metadata=auth()
    )
    await subscriptions(listener)
    chat = stub.Chat(metadata=(*auth("mallory"), (CHANNEL_KEY, room)))
    await subscriptions(chat)
    await chat.write(chat_pb2.ChatMessage(content="first"))
    await chat.write(chat_pb2.ChatMessage(content="spoofed", user_id="alice"))
    [first] = await read(chat)
    assert first.content == "first"
    error = await rpc_error(chat.read())
    assert (error.code(), error_code(error)) == (Status.PERMISSION_DENIED, 103)

    await stub.SendMessage(chat_pb2.ChatMessage(channel=room, content="after"), metadata=auth())
    messages = await read(listener, 2)
    assert [m.content for m in messages] == ["first", "after"]
    assert [m.offset for m in messages] == [messages[0].offset, messages[0].offset + 1]
    listener.cancel()
    async with httpx.AsyncClient() as http:
        assert (await http.get(grpc_node.url + "/healthz")).status_code == 200


async def test_chat_past_the_command_rate_ends_with_resource_exhausted(uid: str) -> None:
    node = GrpcNode(args=["--command-rate", "5", "--command-burst", "3"])
    try:
        node.start()
        async with grpc.aio.insecure_channel(node.grpc_target) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel).Chat(
                metadata=(*auth(), (CHANNEL_KEY, f"chat:{uid}"))
            )
            await subscriptions(chat)
            # The burst of 3, then one too many. (Writing on after the server ended the
            # call would make the client library report its own INTERNAL error instead.)
            for i in range(4):
                await chat.write(chat_pb2.ChatMessage(content=f"m{i}"))
            delivered = []
            while True:  # the status comes after what was sent before the refusal
                try:
                    message = await asyncio.wait_for(chat.read(), TIMEOUT)
                except grpc.aio.AioRpcError:
                    break
                delivered.append(message.content)
            # The client library may drop what arrived right before the status, so what it
            # read is a prefix; history tells exactly what was published: the burst, no more.
            assert delivered == ["m0", "m1", "m2"][: len(delivered)]
            history = node.api("history", channel=f"chat:{uid}").json()["result"]
            assert [p["data"]["content"] for p in history["publications"]] == ["m0", "m1", "m2"]
            code = await asyncio.wait_for(chat.code(), TIMEOUT)
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(await chat.trailing_metadata())
            assert trailing["kizuna-error-code"] == "111"
    finally:
        node.stop()
        node.close_log()
