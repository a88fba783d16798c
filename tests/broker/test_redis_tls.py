"""The Redis broker over TLS (``rediss://``) against a real redis-server with a TLS port.

The Pub/Sub reader and the publish pipeline read their replies in the transport's
callback (broker/redis_tap.py); over TLS the transport is asyncio's TLS transport,
which must hand the bytes to the tap the same way.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kizuna.broker import redis_tap
from tests.broker.conftest import RedisBrokers, pubsub_transport
from tests.broker.contract import HISTORY, pub, unique
from tests.support.processes import RedisProcess, free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server with a TLS port; yields the broker URL for that port."""
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    args = [
        *("--tls-port", str(tls_port)),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    ]
    with RedisProcess(args=args):
        yield f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"


async def test_publishes_and_deliveries_over_tls(tls_redis: str, brokers: RedisBrokers) -> None:
    broker, recorder = await brokers.start(tls_redis)
    channel = unique()
    await broker.subscribe(channel)
    transport = pubsub_transport(broker)
    assert transport.get_extra_info("ssl_object") is not None  # TLS, not plain TCP
    assert isinstance(transport.get_protocol(), redis_tap._Tap)
    positions = [await broker.publish(channel, pub(b"%d" % i), HISTORY) for i in range(20)]
    assert [p.offset for p in positions] == list(range(1, 21))
    await recorder.count(channel, 20)
    assert [p.data for p, _ in recorder.on(channel)] == [b"%d" % i for i in range(20)]
    await broker.close()
    brokers.started.remove(broker)
    await tls_closed(tls_redis)


async def tls_closed(url: str) -> None:
    """Wait until this process holds no open socket to the Redis of ``url``.

    redis-py closes a TLS connection without waiting for the TLS shutdown
    (``disconnect(nowait=True)``), with or without the tap; on a loaded machine the
    socket is still open when the test's loop closes, and pytest reports it unclosed.
    """
    port = int(url.split(":")[2].split("/")[0])

    def still_open() -> list[socket.socket]:
        return [
            s
            for s in gc.get_objects()
            # type(), not isinstance(): gc also lists weak proxies, some of them dead.
            if type(s) is socket.socket and s.fileno() != -1 and _peer_port(s) == port
        ]

    async with asyncio.timeout(10):
        while True:
            if not still_open():
                return
            await asyncio.sleep(0.05)


def _peer_port(sock: socket.socket) -> int | None:
    if sock.family != socket.AF_INET:
        return None
    try:
        return int(sock.getpeername()[1])
    except OSError:
        return None
