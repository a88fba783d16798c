"""Run the benchmark scenarios against kizuna and its peers, in one invocation.

    .venv/bin/python -m bench.run                      # full run (10–13 minutes)
    .venv/bin/python -m bench.run --quick              # small sizes, under a minute
    .venv/bin/python -m bench.run --scenarios fanout --peers kizuna,py-websockets --profile
    .venv/bin/python -m bench.run --url ws://HOST:PORT/connection/websocket --jwt-secret S

For each peer and each scenario: start the server fresh, pinned to the server core;
run the Node load generator pinned to the other core; stop the server. Results go to
``--out`` (git-ignored): ``results.json``, ``results.md`` (the tables with ratios),
the generator specs, every process's log, and the py-spy profiles.

With ``--url`` no server is started: the scenarios run against a kizuna deployment
that is already running (bench/external.py), unpinned, without server CPU or memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import external, procs
from bench.peer import PEERS, Peer, Settings, running
from bench.report import render
from bench.scenarios import FULL, QUICK, Target, run_scenario

SCENARIOS = ("fanout", "idle", "connect")
PER_WAIT = 20.0
"""Longest wait for a quiet machine before one server's turn, in seconds."""
DEFAULT_PEERS = "kizuna,kizuna-chat,py-websockets,node-ws-local,seed-node"
QUICK_PEERS = "kizuna,py-websockets"


def _machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} × {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, Node {node}; "
        f"load average at start {load[0]:.2f} (the machine is shared: compare ratios, "
        "not absolute figures)"
    )


class QuietWait:
    """Before each server's turn, wait (a bounded time) for the neighbours to quieten down.

    The machine is shared: other people's test suites take CPU from both pinned cores.
    Waiting for a quiet moment cannot make the neighbours go away, but it keeps a burst of
    theirs from falling on one server's ladder; what was left is reported with each result.
    """

    def __init__(self, below: float, budget: float) -> None:
        self.below = below
        self.budget = budget

    def wait(self, label: str) -> float:
        busy = procs.busy_cores()
        deadline = time.monotonic() + min(PER_WAIT, self.budget)
        started = time.monotonic()
        while busy > self.below and time.monotonic() < deadline:
            busy = procs.busy_cores(2.0)
        waited = time.monotonic() - started
        self.budget = max(0.0, self.budget - waited)
        if waited >= 1.0:
            print(
                f"[{label}] waited {waited:.0f} s for quiet: neighbours use {busy:.2f} cores",
                file=sys.stderr,
                flush=True,
            )
        return busy


def _score(result: dict[str, Any]) -> float:
    best = result.get("best") if result.get("ok") else None
    return float(best["deliveriesPerSecond"]) if best else -1.0


def _better(kept: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The round to report: the one with the highest passing fan-out step (noise only slows)."""
    if kept is None:
        new["rounds"] = [_score(new)]
        return new
    scores = [*kept.pop("rounds"), _score(new)]
    chosen = new if _score(new) > _score(kept) else kept
    chosen["rounds"] = scores
    return chosen


def _revision() -> str:
    """The commit kizuna was measured at, and whether src/ differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return commit + (" with uncommitted changes in src/" if dirty else "")


def _cpus(text: str) -> int | None:
    return None if text == "none" else int(text)


def _add_external_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "an external target",
        "run the scenarios against a kizuna deployment that is already running, instead of "
        "starting servers (no pinning; the server's CPU and memory are not measured)",
    )
    group.add_argument("--url", help="the deployment's WebSocket URL (ws:// or wss://)")
    group.add_argument("--jwt-secret", help="its HS256 secret: sign one token per connection")
    group.add_argument("--token", help="or one token, shared by every connection")
    group.add_argument(
        "--namespace", default="chat", help="namespace of the bench channels (default: chat)"
    )


def _external_peer(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[Peer, str] | None:
    """The --url target (checked), or None to start the peers as usual."""
    if args.url is None:
        if args.jwt_secret or args.token:
            parser.error("--jwt-secret and --token go with --url")
        return None
    if args.peers:
        parser.error("--url runs against the deployment only: no --peers")
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(
            "--url must be a ws:// or wss:// URL, e.g. ws://host:8000/connection/websocket"
        )
    try:
        peer = external.external_peer(
            args.url, jwt_secret=args.jwt_secret, token=args.token, namespace=args.namespace
        )
    except ValueError as exc:
        parser.error(str(exc))
    return peer, args.url


def _serve(
    name: str, settings: Settings, label: str, target: tuple[Peer, str] | None
) -> contextlib.AbstractContextManager[Target]:
    """Start peer ``name`` for one scenario, or attach to the external target."""
    if target is not None:
        return external.attached(*target)
    return running(PEERS[name], settings, label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--peers", default=None, help=f"default: {DEFAULT_PEERS}")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--profile", action="store_true", help="py-spy the Python servers")
    parser.add_argument(
        "--reference",
        default=None,
        help="the numerator of the ratios (default: kizuna if it runs, else the first peer)",
    )
    parser.add_argument("--server-cpu", default="0", help="core for servers ('none': no pin)")
    parser.add_argument("--loadgen-cpu", default="1", help="core for the load generator")
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers")
    parser.add_argument("--rates", help="fan-out publish rates, comma-separated (msg/s)")
    parser.add_argument("--step-seconds", type=float)
    parser.add_argument("--overload-rate", type=int, help="fan-out rate past the ladder (0: none)")
    parser.add_argument("--connections", type=int, help="idle connections")
    parser.add_argument("--connects", type=int, help="connections per pass of the connect scenario")
    parser.add_argument("--connect-passes", type=int, help="passes of the connect scenario")
    parser.add_argument("--rounds", type=int, help="fan-out ladders per server (best counts)")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.5,
        help="cores the neighbours may use before a server's turn starts without waiting",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=None,
        help="total seconds to wait for quiet (default 120; 0 with --quick or --url)",
    )
    _add_external_options(parser)
    args = parser.parse_args(argv)
    target = _external_peer(args, parser)

    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.subscribers:
        overrides["subscribers"] = args.subscribers
    if args.rates:
        overrides["rates"] = [int(r) for r in args.rates.split(",")]
    if args.step_seconds:
        overrides["step_seconds"] = args.step_seconds
    if args.overload_rate is not None:
        overrides["overload_rate"] = args.overload_rate
    if args.connections:
        overrides["idle_connections"] = args.connections
    if args.rounds:
        overrides["rounds"] = args.rounds
    if args.connects:
        overrides["connects"] = args.connects
    if args.connect_passes:
        overrides["connect_passes"] = args.connect_passes
    plan = dataclasses.replace(plan, **overrides)

    scenarios = [s for s in args.scenarios.split(",") if s]
    peers = [
        p for p in (args.peers or (QUICK_PEERS if args.quick else DEFAULT_PEERS)).split(",") if p
    ]
    if target is not None:
        peers = [external.NAME]
    for name in peers:
        if target is None and name not in PEERS:
            parser.error(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")

    reference = args.reference or ("kizuna" if "kizuna" in peers else peers[0])
    # Socket.IO peers climb a ladder scaled to them, unless the command line named the rates.
    plans = {
        name: plan.scaled(
            (target[0] if target else PEERS[name]).rate_scale,
            rates="rates" not in overrides,
            overload="overload_rate" not in overrides,
        )
        for name in peers
    }

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(out, _cpus(args.server_cpu), _cpus(args.loadgen_cpu))
    if target is not None:  # the deployment's cores are not ours to pin against
        settings = Settings(out, None, None)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
        "machine": _machine(),
        "revision": _revision(),
        "plan": json.dumps(dataclasses.asdict(plan)),
        "plans": {
            name: {"rates": p.rates, "overload_rate": p.overload_rate}
            for name, p in plans.items()
            if p != plan
        },
        "pinning": {"server": settings.server_cpu, "loadgen": settings.loadgen_cpu},
    }
    if target is not None:
        meta["external"] = target[1]
        meta["revision"] = "not known (an external deployment)"
    results: dict[str, dict[str, dict[str, Any]]] = {}
    budget = args.quiet_budget
    if budget is None:
        budget = 0 if args.quick or target is not None else 120
    quiet = QuietWait(args.quiet_below, budget)
    # Scenario by scenario, round by round, server by server: a slow spell of the shared
    # machine then falls on every server's round, not on one server's whole ladder.
    for scenario in scenarios:
        rounds = plan.rounds if scenario == "fanout" else 1
        for round_no in range(1, rounds + 1):
            for name in peers:
                label = f"{name}-{scenario}" + (f"-r{round_no}" if rounds > 1 else "")
                background = quiet.wait(label)
                with _serve(name, settings, label, target) as server:
                    result = run_scenario(
                        scenario, server, plans[name], settings, label, args.profile
                    )
                result["round"] = round_no
                result["background_cores"] = round(background, 2)
                kept = results.setdefault(name, {})
                kept[scenario] = _better(kept.get(scenario), result)
                (out / "results.json").write_text(
                    json.dumps({"meta": meta, "results": results}, indent=2)
                )
    described = {n: (target[0] if target else PEERS[n]).description for n in peers}
    report = render(meta, described, results, reference)
    (out / "results.md").write_text(report)
    print(report)
    failed = [f"{p}/{s}" for p, r in results.items() for s, v in r.items() if not v.get("ok")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
