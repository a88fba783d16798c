"""Scenario X's evidence that a node with no subscribers to a channel gets none of its traffic.

During ``xnode`` one more node of the peer runs on the same Redis and gets no client
at all. Around the fan-out ladder (once every subscriber is live, a second before the
first step; and at the end) this takes a snapshot of what each node and Redis say:

* per node (the active ones and the idle one): bytes it read (``rchar`` of
  ``/proc/PID/io``: every read() of a socket, file or event-loop wakeup fd) and CPU
  seconds: the idle node's barely move while the active ones read every publication
  from Redis;
* for kizuna nodes, their own ``/metrics``: ``kizuna_publications_fanned_out_total``
  and ``kizuna_deliveries_total`` (publications the node fanned out to local subscribers);
* Redis, in the first snapshot (every subscriber connected): ``PUBSUB NUMSUB`` of
  every active Pub/Sub channel (how many connections Redis sends each channel's
  messages to) and how many client connections are in Pub/Sub mode. Redis sends a
  publication only to the connections subscribed to its channel, so NUMSUB = active
  nodes while one more node is connected is the proof on Redis's side.

The differences between the two snapshots go into the result as ``idleNode``.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.peer import RunningServer

__all__ = ["IdleNodeWitness"]

_METRICS = ("kizuna_publications_fanned_out_total", "kizuna_deliveries_total")


def _read_bytes(pid: int) -> int:
    """Bytes ``pid`` read so far through read()/recv() and friends (rchar of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no rchar for pid {pid}")


def _kizuna_counters(port: int) -> dict[str, float]:
    """The fan-out counters of one kizuna node's /metrics, summed over their labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals = dict.fromkeys(_METRICS, 0.0)
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match and match.group(1) in totals:
            totals[match.group(1)] += float(match.group(2))
    return totals


class IdleNodeWitness:
    """Snapshots of every node and of Redis, before and after the ladder."""

    def __init__(self, server: RunningServer, redis_port: int) -> None:
        self.server = server
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
        self.before: dict[str, Any] | None = None

    def _nodes(self) -> list[tuple[str, RunningServer]]:
        active = [self.server, *self.server.nodes]
        named = [(f"active {i + 1}", node) for i, node in enumerate(active)]
        return named + [(f"idle {i + 1}", node) for i, node in enumerate(self.server.idle_nodes)]

    def snapshot(self) -> dict[str, Any]:
        nodes: dict[str, dict[str, float]] = {}
        for name, node in self._nodes():
            figures = {
                "bytesRead": _read_bytes(node.pid),
                "cpuSeconds": procs.cpu_seconds(node.pid),
            }
            if node.peer.protocol in ("kizuna", "kizuna-batch"):
                figures.update(_kizuna_counters(node.port))
            nodes[name] = figures
        channels = sorted(self.redis.pubsub_channels())
        numsub = dict(self.redis.pubsub_numsub(*channels)) if channels else {}
        clients = self.redis.client_list()
        in_pubsub = sum(1 for c in clients if int(c.get("sub", 0)) or int(c.get("psub", 0)))
        return {"nodes": nodes, "numsub": numsub, "pubsubConnections": in_pubsub}

    def start(self) -> None:
        self.before = self.snapshot()

    def finish(self) -> dict[str, Any]:
        """What each node did during the ladder, and what Redis said before it."""
        after = self.snapshot()
        self.redis.close()
        if self.before is None:
            return {"error": "the ladder never started"}
        delta = {
            name: {k: round(v - self.before["nodes"][name][k], 2) for k, v in figures.items()}
            for name, figures in after["nodes"].items()
        }
        return {
            "nodes": delta,
            "numsub": self.before["numsub"],
            "pubsubConnections": self.before["pubsubConnections"],
            "connectedNodes": len(delta),
        }
