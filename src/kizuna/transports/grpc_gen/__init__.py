"""Code generated from ``proto/kizuna/v1/chat.proto`` by ``scripts/gen-proto``. Do not edit.

Checked in so that installing kizuna needs no protoc; tests/grpc/test_codegen.py
fails when it no longer matches what the script generates. Importing it needs
the ``grpc`` extra (grpcio, protobuf); only ``kizuna.transports.grpc`` does.
"""
