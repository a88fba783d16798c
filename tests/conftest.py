"""Fixtures shared by every test package."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.processes import JWT_SECRET, KizunaProcess, RedisProcess

HTTP_TIMEOUT = 5.0
"""Seconds an HTTP call of a test may take before the test fails."""


@pytest.fixture
def secret() -> str:
    return JWT_SECRET


@pytest.fixture
def kizuna() -> Iterator[KizunaProcess]:
    """A fresh ``kizuna serve`` (memory broker) for one test."""
    with KizunaProcess() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A private redis-server for the whole test session."""
    with RedisProcess() as redis:
        yield redis


@pytest.fixture
def uid() -> str:
    """A short unique suffix for channel, room and user names, so tests sharing a server
    never meet."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that never goes through a proxy: all traffic stays on 127.0.0.1."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, trust_env=False) as client:
        yield client
