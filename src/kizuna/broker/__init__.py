"""Brokers, chosen by URL scheme from a lazy registry.

``memory://`` is the embedded default; ``redis://`` and ``rediss://`` load the
Redis broker, whose dependencies are an optional extra. A backend module is
imported only when its scheme is asked for, so a bare install starts without
redis-py.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from kizuna.core.ports import Broker, PresenceStore
from kizuna.exceptions import ConfigError

__all__ = ["SCHEMES", "create_broker"]

SCHEMES: dict[str, str] = {
    "memory": "kizuna.broker.memory:MemoryBroker",
    "redis": "kizuna.broker.redis:RedisBroker",
    "rediss": "kizuna.broker.redis:RedisBroker",
    "redis+cluster": "kizuna.broker.redis:RedisBroker",
    "rediss+cluster": "kizuna.broker.redis:RedisBroker",
}


def create_broker(url: str, **options: Any) -> tuple[Broker, PresenceStore]:
    """The broker for ``url``; it is also the presence store."""
    scheme = urlsplit(url).scheme
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError([f"broker: unknown scheme {scheme!r} in {url!r} (known: {known})"])
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            [f"broker: {scheme}:// needs an optional extra: pip install 'kizuna[redis]' ({exc})"]
        ) from exc
    broker = getattr(module, class_name).from_url(url, **options)
    return broker, broker
