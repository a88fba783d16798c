"""A kizuna deployment someone else runs, as the benchmark's target (``--url``).

    .venv/bin/python -m bench.run --url ws://host:8000/connection/websocket --jwt-secret S

The harness then starts no server: the scenarios' load generator connects to ``url``
with kizuna's native protocol. What it cannot do there, it does not pretend to: the
server's CPU and memory are not ours to read (they are reported as "—"), nothing is
pinned (the server's cores are not ours either), and there is nothing to compare with
in the same run. The figures are the generator's: rates, latencies, losses, failures.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.peer import Peer

__all__ = ["NAME", "ExternalServer", "attached", "external_peer"]

NAME = "deployment"
"""The target's name in the results and the report."""


def _not_started(port: int, helpers: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    raise RuntimeError("an external deployment is not started by the harness")


def external_peer(
    url: str, *, jwt_secret: str | None, token: str | None, namespace: str = "chat"
) -> Peer:
    """A kizuna-protocol peer that signs tokens with the deployment's secret (or uses ``token``).

    ``namespace`` must exist on the deployment and let clients publish: ``chat`` is in
    kizuna's defaults (with presence and join/leave, which cost a little per subscribe).
    """
    if (jwt_secret is None) == (token is None):
        raise ValueError("give the deployment's --jwt-secret or a --token, not both")
    how = (
        "a distinct HS256 token per connection, signed with the given secret"
        if jwt_secret is not None
        else "the one given token, shared by every connection"
    )
    return Peer(
        name=NAME,
        protocol="kizuna",
        command=_not_started,
        description=f"the deployment at {url}, started elsewhere; auth: {how}; channels in "
        f"namespace `{namespace}`. Not pinned; its CPU and memory are not measured",
        fanout_channel=f"{namespace}:bench-fanout",
        idle_prefix=f"{namespace}:bench-room-",
        jwt_secret=jwt_secret or "",  # unused when a fixed token is given
        fixed_token=token,
    )


@dataclass
class ExternalServer:
    """What the load generator needs of a target it did not start: only where it is."""

    peer: Peer
    url: str
    pid: int | None = None
    """No process of ours: no RSS to read."""
    cpu_pids: list[int] = field(default_factory=list)
    """No processes of ours: no CPU to read."""
    redis_pids: list[int] = field(default_factory=list)
    """Nor a Redis of ours (RunningServer's, for the Redis-backed peers)."""

    @property
    def http_base(self) -> str:
        """The deployment's HTTP endpoints (SSE), on the WebSocket URL's host."""
        parts = urllib.parse.urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}"


@contextlib.contextmanager
def attached(peer: Peer, url: str) -> Iterator[ExternalServer]:
    """The counterpart of :func:`bench.peer.running` for a deployment: nothing to start or stop."""
    yield ExternalServer(peer, url)
