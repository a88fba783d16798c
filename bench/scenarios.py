"""The scenarios: what the load generator does against one running server.

fanout
    N subscribers on one channel and one publisher. The publisher climbs a ladder of
    publish rates; each step runs for a fixed time, then waits (bounded) for the last
    deliveries. A step passes when nothing was lost, nobody was disconnected and the
    delivery latency's p99 is under the limit. A failing step is tried once more (the
    machine is shared: one noisy neighbour should not end the ladder); two failed rates
    in a row end it. The figures of merit are the highest passing rate, in deliveries per
    second, and what a server does at one fixed high rate (``overload_rate``):
    deliver everything late, or lose messages or subscribers.

idle
    N connections spread over C channels, every one subscribed and proven live by a
    probe publication on each channel. Memory per connection is the server's RSS
    after minus before, divided by N.

connect
    N connections opened with ``connect_concurrency`` handshakes in flight, each counted
    when the server has answered it: kizuna's connect reply, after verifying that
    connection's own JWT (one distinct token per connection, so nothing can be answered
    from a cache); for the guide's servers, which have no authentication, the open
    WebSocket. Figures: connections per second (connected / wall time), p50/p99 connect
    latency, server CPU, failures. Every connection is then closed; ``connect_passes``
    passes, the best counts.

xnode (scenario X of issue #7)
    The fanout ladder across nodes: two processes of a Redis-backed peer on one
    private Redis, the subscribers split evenly over both, the publisher on the
    first. After the ladder, one step at half the reference server's highest rate
    (``half_rate``, set by bench/run.py) compares latency at the same load. A third,
    idle node runs meanwhile: bench/witness.py shows it gets none of the traffic.

channels (scenario D of issue #7)
    N connections, each subscribed to its own channel; one publisher sends a steady
    rate to channels drawn at random (seeded: the same for every server) for a fixed
    time. Server CPU (and Redis's), loss and p99 of routing one-recipient messages.

All stop by themselves: the ladder and every wait are bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import procs
from bench.external import ExternalServer
from bench.peer import BENCH_DIR, RunningServer, Settings, npm_ci
from bench.witness import IdleNodeWitness

__all__ = ["FULL", "QUICK", "Plan", "run_scenario"]

LOADGEN_DIR = BENCH_DIR / "loadgen"


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    subscribers: int = 1000
    rates: list[int] = field(
        default_factory=lambda: [10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500]
    )
    """Publish rates (messages/s) on the fan-out channel, climbed in order."""
    step_seconds: float = 3.0
    drain_seconds: float = 3.0
    retries: int = 1
    """How many times a failing step is tried again (a rate fails when every try fails)."""
    stop_after: int = 2
    """The ladder stops after this many failed rates in a row."""
    rounds: int = 2
    overload_rate: int = 200
    """After the ladder, one step at this publish rate (msg/s; 0: none), the same for every
    server (above the peers' limits): does it still deliver everything?"""
    overload_drain_seconds: float = 5.0
    """Fan-out ladders per server, interleaved across servers; the best round counts."""
    p99_limit_ms: float = 100.0
    content_bytes: int = 64
    """Size of the ``content`` string of each publication (the whole message is larger)."""
    idle_connections: int = 10_000
    idle_channels: int = 100
    connect_concurrency: int = 100
    """Handshakes in flight (every scenario's connection phase; the connect scenario's load)."""
    connects: int = 5000
    """Connections the connect scenario opens in each pass."""
    connect_passes: int = 3
    """Passes of the connect scenario against the same server (each reported; the best counts)."""
    # --- xnode: the fanout ladder (subscribers, rates, ...) over several nodes -----------
    xnode_nodes: int = 2
    xnode_idle_nodes: int = 1
    """Nodes started with no clients, to show they receive none of the traffic."""
    half_rate: int = 0
    """xnode's extra step, msg/s (0: half of the server's own highest passing rate)."""
    # --- channels --------------------------------------------------------------------------
    channel_subscribers: int = 2000
    """Connections, each on its own channel."""
    channel_rate: int = 5000
    """Publications per second, each to one channel drawn at random."""
    channel_seconds: float = 10.0
    channel_rounds: int = 3
    """Rounds of the channels scenario, interleaved across servers; the median counts.

    One run's CPU varies by up to ±20 % on a shared machine (bench/RESULTS.md)."""

    def scaled(self, factor: float, *, rates: bool = True, overload: bool = True) -> Plan:
        """The same plan with its publish rates times ``factor`` (at least 1 msg/s each)."""
        if factor == 1.0:
            return self
        changes: dict[str, Any] = {}
        if rates:
            scaled = [max(1, round(rate * factor)) for rate in self.rates]
            changes["rates"] = list(dict.fromkeys(scaled))  # 0.4 and 0.6 must not both be 1
        if overload and self.overload_rate:
            changes["overload_rate"] = max(1, round(self.overload_rate * factor))
        return replace(self, **changes)


FULL = Plan()
QUICK = Plan(
    subscribers=100,
    rates=[100, 500, 2000],
    step_seconds=2.0,
    drain_seconds=2.0,
    retries=0,
    stop_after=3,
    rounds=1,
    overload_rate=0,
    idle_connections=500,
    idle_channels=10,
    connects=500,
    connect_passes=2,
    channel_subscribers=200,
    channel_rate=500,
    channel_seconds=3.0,
    channel_rounds=1,
)


Target = RunningServer | ExternalServer
"""A server the harness started, or a deployment someone else runs (``--url``)."""


def _spec(scenario: str, server: Target, plan: Plan) -> dict[str, Any]:
    peer = server.peer
    spec: dict[str, Any] = {
        "scenario": scenario,
        "protocol": peer.protocol,
        "url": server.url,
        "httpBase": server.http_base,
        "token": peer.token(),
        "serverPids": server.cpu_pids,
        "redisPids": server.redis_pids,
        "rssPid": server.pid,
        "clkTck": os.sysconf("SC_CLK_TCK"),
        "contentBytes": plan.content_bytes,
        "connectConcurrency": plan.connect_concurrency,
    }
    if scenario in ("fanout", "xnode"):
        spec.update(
            channel=peer.fanout_channel,
            subscribers=plan.subscribers,
            rates=plan.rates,
            stepSeconds=plan.step_seconds,
            drainSeconds=plan.drain_seconds,
            retries=plan.retries,
            stopAfter=plan.stop_after,
            overloadRate=plan.overload_rate,
            overloadDrainSeconds=plan.overload_drain_seconds,
            p99LimitMs=plan.p99_limit_ms,
        )
        if scenario == "xnode":
            if not isinstance(server, RunningServer):
                raise ValueError("xnode starts its own nodes: it cannot run against --url")
            spec.update(urls=server.urls, httpBases=server.http_bases)
            spec.update(halfStep=True, halfRate=plan.half_rate)
    elif scenario == "idle":
        spec.update(
            connections=plan.idle_connections,
            channels=plan.idle_channels,
            channelPrefix=peer.idle_prefix,
        )
    elif scenario == "connect":
        spec.update(_connect_spec(peer.tokens(plan.connects), plan))
    elif scenario == "channels":
        spec.update(
            connections=plan.channel_subscribers,
            channelPrefix=peer.idle_prefix,
            rate=plan.channel_rate,
            stepSeconds=plan.channel_seconds,
            drainSeconds=plan.drain_seconds,
            p99LimitMs=plan.p99_limit_ms,
            seed=1,
        )
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return spec


def _connect_spec(tokens: list[str], plan: Plan) -> dict[str, Any]:
    """The connect scenario's fields; ``tokens``: one per connection (empty: no auth)."""
    return {"connects": plan.connects, "connectPasses": plan.connect_passes, "tokens": tokens}


PROFILE_FROM = {"fanout": "fanout: steps", "connect": "connect: ", "channels": "channels: steps"}
"""Scenarios ``--profile`` records, from the generator's log line that starts the measured part."""


class Profiler:
    """``py-spy record`` on the server during the measured part of a scenario."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(pyspy).exists() and shutil.which(pyspy) is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        # --native shows where the C time goes (the write syscall, the cyclic GC); it needs
        # py-spy to pause the process for each sample, so a profiled run's timings are not
        # the ones to report.
        argv = [pyspy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200"]
        argv += ["--native", "--output", str(self.output)]
        log = self.output.with_suffix(".log")
        self.proc = procs.start(argv, log=log)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_scenario(
    scenario: str,
    server: Target,
    plan: Plan,
    settings: Settings,
    label: str,
    profile: bool = False,
) -> dict[str, Any]:
    """Run one scenario with the load generator; returns its result (plus the steps)."""
    npm_ci(LOADGEN_DIR)
    spec_path = settings.out / "specs" / f"{label}.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(_spec(scenario, server, plan), indent=2))
    argv = ["node", str(LOADGEN_DIR / "loadgen.js"), str(spec_path)]
    gen = procs.start(
        procs.pinned(settings.loadgen_cpu, argv),
        log=settings.out / "logs" / f"{label}-loadgen.log",
        stdout=subprocess.PIPE,
    )
    profiler = None
    # Only a server of ours can be profiled: an external deployment (--url) has no pid.
    if profile and scenario in PROFILE_FROM and server.peer.python and server.pid:
        profiler = Profiler(server.pid, settings.out / f"profile-{label}.txt")
    witness = None
    if isinstance(server, RunningServer) and server.idle_nodes and server.redis_port is not None:
        witness = IdleNodeWitness(server, server.redis_port)
    result: dict[str, Any] = {"ok": False, "error": "the load generator printed no result"}
    started = time.monotonic()
    assert gen.stdout is not None
    try:
        for raw in gen.stdout:
            event = json.loads(raw)
            kind = event.pop("event")
            if kind == "log":
                _say(label, event["msg"])
                if profiler is not None and event["msg"].startswith(PROFILE_FROM[scenario]):
                    profiler.start()
                if witness is not None and event["msg"].startswith("fanout: all"):
                    witness.start()  # subscribed, the ladder a second away
            elif kind == "step":
                _say(label, _step_line(event))
            elif kind == "result":
                result = event
                if witness is not None:
                    result["idleNode"] = witness.finish()
        gen.wait(30)
    finally:
        if profiler is not None:
            profiler.stop()
        procs.stop(gen)
        gen.stdout.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    if profiler is not None:
        result["profile"] = str(profiler.output)
    if not result.get("ok"):
        _say(label, f"FAILED: {result.get('error')} {result.get('errors', '')}")
    return result


def _step_line(step: dict[str, Any]) -> str:
    verdict = "pass" if step["pass"] else "FAIL"
    kind = " (half)" if step.get("half") else " (overload)" if step.get("overload") else ""
    redis = f" (redis {step['cpu']['redis']}%)" if "redis" in step["cpu"] else ""
    server = step["cpu"]["server"]  # None for an external target: not ours to read
    return (
        f"{step['rate']:>5}/s x{step['subscribers']}{kind} {verdict}: "
        f"{step['deliveriesPerSecond']:>8} deliveries/s, lost {step['lost']}, "
        f"p50 {step['p50']} ms p99 {step['p99']} ms max {step['max']:.1f} ms, "
        f"cpu server {'—' if server is None else server}%{redis} "
        f"generator {step['cpu']['generator']}%"
    )


def _say(label: str, message: str) -> None:
    print(f"[{label}] {message}", file=sys.stderr, flush=True)


def plan_dict(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
