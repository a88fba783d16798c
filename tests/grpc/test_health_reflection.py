"""The standard services beside ChatService: health checking and server reflection."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.grpc.clients import TIMEOUT, rpc_error


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kizuna.v1.ChatService"):
        response = await health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_health_does_not_know_other_services(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    error = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope.Service")))
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def _reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=TIMEOUT)
    await call.write(request)
    await call.done_writing()
    response: reflection_pb2.ServerReflectionResponse = await call.read()
    return response


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert names == {
        "kizuna.v1.ChatService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_serves_the_proto_with_the_guides_fields(
    channel: grpc.aio.Channel,
) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="kizuna.v1.ChatService")
    response = await _reflect(channel, request)
    [raw] = response.file_descriptor_response.file_descriptor_proto
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (proto.name, proto.package) == ("kizuna/v1/chat.proto", "kizuna.v1")
    [service] = proto.service
    modes = {
        m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
        for m in service.method
    }
    assert modes == {
        "SendMessage": (".kizuna.v1.ChatMessage", ".kizuna.v1.MessageResponse", False, False),
        "SubscribeMessages": (
            ".kizuna.v1.SubscriptionRequest",
            ".kizuna.v1.ChatMessage",
            False,
            True,
        ),
        "UploadLogs": (".kizuna.v1.LogEntry", ".kizuna.v1.UploadSummary", True, False),
        "Chat": (".kizuna.v1.ChatMessage", ".kizuna.v1.ChatMessage", True, True),
    }
    chat_message = next(m for m in proto.message_type if m.name == "ChatMessage")
    numbers = {f.name: f.number for f in chat_message.field}
    assert {k: numbers[k] for k in ("user_id", "content", "timestamp")} == {
        "user_id": 1,
        "content": 2,
        "timestamp": 3,
    }
