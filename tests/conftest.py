"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import JWT_SECRET, KizunaProcess, RedisProcess


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
