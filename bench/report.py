"""Turn a run's results into Markdown: one summary table per scenario, with ratios.

Ratios compare the reference server (``kizuna`` unless told otherwise) with each
other server of the same run: the only comparison a shared, noisy machine supports.
For fan-out a ratio above 1 means kizuna delivered more; for memory per connection a
ratio below 1 means kizuna used less; for the connect rate above 1 means kizuna
connected more per second.

A run against an external deployment (``--url``) has one server and no ratios; its
server CPU and memory are not measured, and the report says so at the top.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.peer import REDIS_TWINS
from bench.profile import markdown as profile_markdown

__all__ = ["render"]

GENERATOR_BUSY = 80.0
"""Generator CPU (% of its core) from which a failing step may be the generator's limit."""

Results = dict[str, dict[str, dict[str, Any]]]
"""peer -> scenario -> result."""


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(mine: float | None, theirs: float | None) -> str:
    if not mine or not theirs:
        return "—"
    return f"{mine / theirs:.2f}"


def _best_rate(result: dict[str, Any]) -> float | None:
    best = result.get("best") if result.get("ok") else None
    return float(best["deliveriesPerSecond"]) if best else None


def _topped(result: dict[str, Any]) -> bool:
    """The ladder's last step passed: the server's limit is above the ladder."""
    steps = result.get("steps", [])
    return bool(result.get("ok")) and bool(steps) and bool(steps[-1]["pass"])


def _fanout_ratio(mine: dict[str, Any] | None, theirs: dict[str, Any]) -> str:
    if mine is None:
        return "—"
    text = _ratio(_best_rate(mine), _best_rate(theirs))
    if text == "—" or mine is theirs:
        return text
    if _topped(mine) and _topped(theirs):
        return "— (both above the ladder)"
    if _topped(mine):
        return "≥ " + text
    if _topped(theirs):
        return "≤ " + text
    return text


def _ladder(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """A ladder's summary columns: its best step, that step's CPU, what ended it, each round."""
    best = result.get("best") or {}
    last = result["steps"][-1] if result["steps"] else None
    first_fail = _why(last) if last and not last["pass"] else "none (above the ladder)"
    rounds = ", ".join(_fmt(int(r)) if r >= 0 else "none" for r in result.get("rounds", []))
    return best, best.get("cpu", {}), first_fail, rounds


def _why(step: dict[str, Any]) -> str:
    why = []
    if step["lost"]:
        why.append(f"lost {step['lost']:,}")
    if step["disconnects"]:
        why.append(f"{step['disconnects']} disconnects")
    why.append(f"p99 {_fmt(step['p99'])} ms")
    if step["cpu"]["generator"] >= GENERATOR_BUSY:
        why.append(f"generator busy ({_fmt(step['cpu']['generator'])}% CPU)")
    return f"{step['rate']}/s: " + ", ".join(why)


def _waiting(cpu: dict[str, Any]) -> str:
    return f"{_fmt(cpu.get('serverWaiting'))} / {_fmt(cpu.get('generatorWaiting'))}"


def _fanout(results: Results, reference: str) -> list[str]:
    rows = {p: r["fanout"] for p, r in results.items() if "fanout" in r}
    if not rows:
        return []
    mine = rows.get(reference)
    lines = [
        "### Fan-out: highest rate with no loss and p99 under the limit",
        "",
        "| server | subscribers | publish msg/s | deliveries/s | p50 ms | p99 ms | max ms "
        "| server CPU % | generator CPU % | waiting for CPU % (server / generator) "
        "| neighbours' load before (cores) "
        f"| step that ended the ladder | deliveries/s per round | {reference} ÷ server |",
        "| --- " + "| ---: " * 10 + "| --- | --- | ---: |",
    ]
    for peer, result in rows.items():
        if not result.get("ok"):
            lines.append(f"| {peer} | failed: {result.get('error')} |" + " |" * 12)
            continue
        best, cpu, first_fail, rounds = _ladder(result)
        lines.append(
            f"| {peer} | {_fmt(result['subscribers'])} | {_fmt(best.get('publishRate'))} "
            f"| {_fmt(best.get('deliveriesPerSecond'))} | {_fmt(best.get('p50'))} "
            f"| {_fmt(best.get('p99'))} | {_fmt(best.get('max'))} "
            f"| {_fmt(cpu.get('server'))} | {_fmt(cpu.get('generator'))} | {_waiting(cpu)} "
            f"| {_fmt(result.get('background_cores'), 2)} | {first_fail} | {rounds} "
            f"| {_fanout_ratio(mine, result)} |"
        )
    lines += [
        "",
        "Every step of the reported round (a failing step is tried once more; two failed rates "
        "in a row end the ladder; CPU is % of one core over the publishing window):",
        "",
        "| server | step | rate/s | sent | deliveries/s | lost | disconnects | p50 ms | p99 ms "
        "| max ms | server CPU % | generator CPU % | waiting % (server / generator) | pass |",
        "| --- " + "| ---: " * 12 + "| --- |",
    ]
    for peer, result in rows.items():
        for s in result.get("steps", []):
            lines.append(
                f"| {peer} | {s['step']} | {_fmt(s['rate'])} | {_fmt(s['sent'])} "
                f"| {_fmt(s['deliveriesPerSecond'])} | {_fmt(s['lost'])} | {s['disconnects']} "
                f"| {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} "
                f"| {_fmt(s['cpu']['server'])} | {_fmt(s['cpu']['generator'])} "
                f"| {_waiting(s['cpu'])} | {'yes' if s['pass'] else 'no'} |"
            )
    return [*lines, ""]


def _overload(results: Results) -> list[str]:
    rows = {
        p: r["fanout"]["overload"]
        for p, r in results.items()
        if r.get("fanout", {}).get("ok") and r["fanout"].get("overload")
    }
    if not rows:
        return []
    lines = [
        "### Fan-out at a fixed high rate, one step after the ladder",
        "",
        "Every server at the same publish rate (Socket.IO peers: at their scaled one). "
        "Lost = not delivered by the end of a 5 s drain after the last publication.",
        "",
        "| server | publish msg/s | subscribers | offered deliveries/s | delivered/s | lost "
        "| disconnects | p50 ms | p99 ms | max ms | server CPU % "
        "| waiting % (server / generator) |",
        "| --- " + "| ---: " * 11 + "|",
    ]
    for peer, s in rows.items():
        lines.append(
            f"| {peer} | {_fmt(s['rate'])} | {_fmt(s['subscribers'])} "
            f"| {_fmt(s['rate'] * s['subscribers'])} "
            f"| {_fmt(s['deliveriesPerSecond'])} | {_fmt(s['lost'])} | {s['disconnects']} "
            f"| {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} "
            f"| {_fmt(s['cpu']['server'])} | {_waiting(s['cpu'])} |"
        )
    return [*lines, ""]


def _costs(result: dict[str, Any]) -> dict[int, float]:
    """Publish rate -> median server CPU µs per delivery over that rate's attempts."""
    by_rate: dict[int, list[float]] = {}
    for step in result.get("steps", []):
        cost = step.get("cost", {}).get("server")
        if cost is not None:
            by_rate.setdefault(step["rate"], []).append(cost)
    return {rate: statistics.median(costs) for rate, costs in by_rate.items()}


def _cost(results: Results, reference: str) -> list[str]:
    rows = {p: _costs(r["fanout"]) for p, r in results.items() if r.get("fanout", {}).get("ok")}
    rows = {p: costs for p, costs in rows.items() if costs}  # none for an external target
    if not rows:
        return []
    rates = sorted({rate for costs in rows.values() for rate in costs})
    common = [r for r in rates if all(r in costs for costs in rows.values())]
    at = common[-1] if common else None
    mine = rows.get(reference, {}).get(at) if at is not None else None
    lines = [
        "### Fan-out: server CPU per delivery (µs, lower is better)",
        "",
        "CPU time of the server (and its Redis) over a whole step divided by the deliveries: "
        "unlike latency it hardly depends on what other processes took from the core, so "
        "these ratios are the steadiest figures of a run on a shared machine. Median over a "
        "rate's attempts.",
        "",
        "| server | "
        + " | ".join(f"{r}/s" for r in rates)
        + (f" | {reference} ÷ server at {at}/s |" if at is not None else " |"),
        "| --- " + "| ---: " * (len(rates) + (1 if at is not None else 0)) + "|",
    ]
    for peer, costs in rows.items():
        cells = [_fmt(float(costs[r]), 2) if r in costs else "" for r in rates]
        ratio = [_ratio(mine, costs.get(at))] if at is not None else []
        lines.append(f"| {peer} | " + " | ".join([*cells, *ratio]) + " |")
    return [*lines, ""]


def _idle(results: Results, reference: str) -> list[str]:
    rows = {p: r["idle"] for p, r in results.items() if "idle" in r}
    if not rows:
        return []
    ref = rows.get(reference, {})
    mine = ref.get("kbPerConnection") if ref.get("ok") else None
    lines = [
        "### Idle connections: memory per connection",
        "",
        "| server | connections | RSS before MB | RSS after MB | KB per connection "
        f"| connect time s | connects/s | {reference} ÷ server |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer, r in rows.items():
        if not r.get("ok"):
            lines.append(f"| {peer} | failed: {r.get('error')} |" + " |" * 6)
            continue
        lines.append(
            f"| {peer} | {_fmt(r['connections'])} | {_mb(r['rssBeforeKb'])} "
            f"| {_mb(r['rssAfterKb'])} | {_fmt(r['kbPerConnection'])} "
            f"| {_fmt(r['connectSeconds'])} | {_fmt(r['connectsPerSecond'])} "
            f"| {_ratio(mine, r['kbPerConnection'])} |"
        )
    return [*lines, ""]


def _mb(kb: float | None) -> str:
    """kB as MB; an external deployment's RSS is not known (None)."""
    return "—" if kb is None else f"{kb / 1024:,.1f}"


def _auth(result: dict[str, Any]) -> str:
    tokens = int(result.get("distinctTokens") or 0)
    if tokens == 0:
        return "none"
    return "JWT, one shared" if tokens == 1 else f"JWT, {tokens:,} distinct"


def _connect(results: Results, reference: str) -> list[str]:
    """Scenario C: connections per second, connect latency, server CPU, failures."""
    rows = {p: r["connect"] for p, r in results.items() if "connect" in r}
    if not rows:
        return []
    ref = rows.get(reference, {}).get("bestPass") or {}
    mine = ref.get("connectsPerSecond")
    my_cost = (ref.get("cost") or {}).get("server")
    any_result = next(iter(rows.values()))
    lines = [
        f"### Connect rate: {_fmt(any_result.get('connections'))} connections, "
        f"{_fmt(any_result.get('concurrency'))} handshakes in flight",
        "",
        "A connection counts when the server has answered it: kizuna's connect reply, after "
        "verifying the connection's JWT; for servers without authentication (the guide's), "
        "the open WebSocket. Connects/s = connected ÷ wall time of the pass; latency from "
        "creating the socket to that answer; CPU over the pass, as % of one core and per "
        "connection. Every connection is then closed with a close frame. The best pass "
        "(without failures) counts; all are listed. Connects/s ratios above 1 and CPU ratios "
        "below 1 favour the reference; CPU per connect is the steadier figure on a shared "
        "machine.",
        "",
        "| server | auth | connected | connects/s | connects/s per pass | p50 ms | p99 ms "
        "| max ms | server CPU % | server CPU µs per connect | generator CPU % "
        "| waiting for CPU % (server / generator) | failed | dropped | closed in s "
        f"| {reference} ÷ server, connects/s | {reference} ÷ server, CPU per connect |",
        "| --- | --- " + "| ---: " * 15 + "|",
    ]
    notes: list[str] = []
    for peer, r in rows.items():
        best = r.get("bestPass")
        if not best:
            lines.append(f"| {peer} | failed: {r.get('error')} |" + " |" * 15)
            continue
        passes = r.get("passes", [])
        per_pass = ", ".join(_fmt(p["connectsPerSecond"]) for p in passes)
        cpu = best["cpu"]
        generator = _fmt(cpu.get("generator"))
        if (cpu.get("generator") or 0) >= GENERATOR_BUSY:
            generator += " (busy)"
        failed = sum(p["failed"] for p in passes)
        dropped = sum(p["dropped"] for p in passes)
        lines.append(
            f"| {peer} | {_auth(r)} | {_fmt(best['connected'])} "
            f"| {_fmt(best['connectsPerSecond'])} | {per_pass} | {_fmt(best['p50'])} "
            f"| {_fmt(best['p99'])} | {_fmt(best['max'])} | {_fmt(cpu.get('server'))} "
            f"| {_fmt(best['cost'].get('server'))} | {generator} | {_waiting(cpu)} "
            f"| {_fmt(failed)} | {_fmt(dropped)} | {_fmt(best['closeSeconds'], 2)} "
            f"| {_ratio(mine, best['connectsPerSecond'])} "
            f"| {_ratio(my_cost, best['cost'].get('server'))} |"
        )
        if not r.get("ok"):
            errors = "; ".join(f"{k} × {v:,}" for k, v in (r.get("errors") or {}).items())
            notes.append(f"- **{peer}**: {r.get('error')}" + (f" ({errors})" if errors else ""))
    if notes:
        lines += ["", "Failures (all passes):", "", *notes]
    return [*lines, "", *_connect_passes(rows)]


def _connect_passes(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Every pass: a slow one usually shows its cause in the waiting-for-CPU column."""
    lines = [
        "Every pass (CPU over the pass's connecting, % of one core):",
        "",
        "| server | pass | connected | connects/s | p50 ms | p99 ms | max ms | server CPU % "
        "| server CPU µs per connect | generator CPU % | waiting % (server / generator) "
        "| failed | dropped | closed in s |",
        "| --- " + "| ---: " * 13 + "|",
    ]
    for peer, r in rows.items():
        for p in r.get("passes", []):
            cpu = p["cpu"]
            lines.append(
                f"| {peer} | {p['pass']} | {_fmt(p['connected'])} "
                f"| {_fmt(p['connectsPerSecond'])} | {_fmt(p['p50'])} | {_fmt(p['p99'])} "
                f"| {_fmt(p['max'])} | {_fmt(cpu.get('server'))} "
                f"| {_fmt(p['cost'].get('server'))} | {_fmt(cpu.get('generator'))} "
                f"| {_waiting(cpu)} | {_fmt(p['failed'])} | {_fmt(p['dropped'])} "
                f"| {_fmt(p['closeSeconds'], 2)} |"
            )
    return [*lines, ""]


def _external(meta: dict[str, Any]) -> list[str]:
    """The label of a run against someone else's deployment: what it does not measure."""
    url = meta.get("external")
    if not url:
        return []
    return [
        f"**External target: {url}**, a deployment the harness did not start. Its CPU and "
        "memory are not measured (not ours to read: shown as —), nothing is pinned, and "
        "there is no other server in the run to compare with. The figures are what the load "
        "generator on this machine saw, through whatever network lies between; the machine "
        "line below describes the generator's machine, not the server's.",
        "",
    ]


# --- xnode (scenario X) and channels (scenario D) ----------------------------------------


def _cpu(value: Any) -> str:
    """A CPU percentage (JSON turns 2.0 into 2)."""
    return _fmt(None if value is None else float(value))


def _redis_per_100k(step: dict[str, Any]) -> float | None:
    """Redis CPU (% of a core) per 100,000 deliveries/s at one step."""
    redis = step.get("cpu", {}).get("redis")
    rate = step.get("deliveriesPerSecond")
    if redis is None or not rate:
        return None
    return float(redis) / (float(rate) / 100_000)


def nodes_cpu(step: dict[str, Any]) -> float | None:
    """The server processes' CPU without Redis's (``server`` counts both)."""
    cpu = step.get("cpu", {})
    if cpu.get("server") is None:
        return None
    return float(cpu["server"]) - float(cpu.get("redis") or 0.0)


def _xnode(results: Results, reference: str) -> list[str]:
    rows = {p: r["xnode"] for p, r in results.items() if "xnode" in r}
    if not rows:
        return []
    reference = REDIS_TWINS.get(reference, reference)  # xnode runs kizuna as kizuna-redis
    rows = dict(sorted(rows.items(), key=lambda row: row[0] != reference))  # reference first
    mine = rows.get(reference)
    ref_best = (mine or {}).get("best") or {}
    lines = [
        "### Cross-node fan-out (xnode): highest rate with no loss and p99 under the limit",
        "",
        "Two processes of each server on one private Redis (all on the server core), the "
        "subscribers split evenly over both, the publisher on the first. *At half* is one "
        "step after the ladder at half the reference's highest passing rate "
        f"({_fmt(ref_best.get('rate'))} msg/s for {reference}: "
        f"{_fmt((ref_best.get('rate') or 0) // 2)} msg/s). Server CPU is both nodes "
        "plus Redis, Redis also on its own.",
        "",
        "| server | nodes | subscribers | publish msg/s | deliveries/s | p99 ms "
        "| server CPU % (nodes + Redis) | Redis CPU % | Redis CPU % per 100k deliveries/s "
        "| at half: msg/s | at half: lost | at half: p99 ms | step that ended the ladder "
        f"| deliveries/s per round | {reference} ÷ server |",
        "| --- " + "| ---: " * 11 + "| --- | --- | ---: |",
    ]
    for peer, result in rows.items():
        if not result.get("ok"):
            lines.append(f"| {peer} | failed: {result.get('error')} |" + " |" * 13)
            continue
        best, cpu, first_fail, rounds = _ladder(result)
        half = result.get("half") or {}
        lines.append(
            f"| {peer} | {result.get('nodes', 1)} | {_fmt(result['subscribers'])} "
            f"| {_fmt(best.get('publishRate'))} | {_fmt(best.get('deliveriesPerSecond'))} "
            f"| {_fmt(best.get('p99'))} | {_cpu(cpu.get('server'))} | {_cpu(cpu.get('redis'))} "
            f"| {_fmt(_redis_per_100k(best))} | {_fmt(half.get('rate'))} "
            f"| {_fmt(half.get('lost'))} | {_fmt(half.get('p99'))} | {first_fail} | {rounds} "
            f"| {_fanout_ratio(mine, result)} |"
        )
    lines += [
        "",
        "Every step of the reported round (CPU: % of one core over the publishing window; "
        "nodes = both server processes without Redis):",
        "",
        "| server | step | rate/s | sent | deliveries/s | lost | disconnects | p50 ms | p99 ms "
        "| max ms | nodes CPU % | Redis CPU % | Redis % per 100k deliveries/s "
        "| generator CPU % | pass |",
        "| --- " + "| ---: " * 13 + "| --- |",
    ]
    for peer, result in rows.items():
        for s in result.get("steps", []) + [result[k] for k in ("half",) if result.get(k)]:
            step = f"{s['step']} (half)" if s.get("half") else str(s["step"])
            lines.append(
                f"| {peer} | {step} | {_fmt(s['rate'])} | {_fmt(s['sent'])} "
                f"| {_fmt(s['deliveriesPerSecond'])} | {_fmt(s['lost'])} | {s['disconnects']} "
                f"| {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} "
                f"| {_fmt(nodes_cpu(s))} | {_cpu(s['cpu'].get('redis'))} "
                f"| {_fmt(_redis_per_100k(s))} | {_cpu(s['cpu']['generator'])} "
                f"| {'yes' if s['pass'] else 'no'} |"
            )
    return [*lines, "", *_idle_nodes(rows)]


def _idle_nodes(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The evidence that a node without subscribers gets none of the channel's traffic."""
    witnessed = {p: r["idleNode"] for p, r in rows.items() if r.get("idleNode", {}).get("nodes")}
    if not witnessed:
        return []
    lines = [
        "#### A node with no subscribers receives none of the channel's traffic",
        "",
        "During the ladder one more node of each server ran on the same Redis with no client "
        "at all. What each node did from a second before the first step to the end of the "
        "run (bytes read: `rchar` of /proc/PID/io, every read() of a socket, file or "
        "event-loop wakeup; kizuna's own /metrics: publications fanned out to local "
        "subscribers), and Redis's `PUBSUB NUMSUB` per channel with every subscriber "
        "connected (the connections Redis sends that channel's messages to):",
        "",
        "| server | node | bytes read | CPU s | publications fanned out | deliveries |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for peer, w in witnessed.items():
        for node, f in w["nodes"].items():
            lines.append(
                f"| {peer} | {node} | {_fmt(int(f['bytesRead']))} | {_fmt(f['cpuSeconds'], 2)} "
                f"| {_fmt(f.get('kizuna_publications_fanned_out_total'), 0)} "
                f"| {_fmt(f.get('kizuna_deliveries_total'), 0)} |"
            )
    lines += [
        "",
        "| server | nodes connected to Redis | PUBSUB NUMSUB, subscribers connected |",
        "| --- | ---: | --- |",
    ]
    for peer, w in witnessed.items():
        numsub = ", ".join(f"`{ch}`: {n}" for ch, n in w["numsub"].items()) or "none"
        lines.append(f"| {peer} | {w['connectedNodes']} | {numsub} |")
    return [*lines, ""]


def _channels(results: Results, reference: str) -> list[str]:
    rows = {p: r["channels"] for p, r in results.items() if "channels" in r}
    if not rows:
        return []
    rows = dict(sorted(rows.items(), key=lambda row: row[0] != reference))  # reference first
    ref = rows.get(reference, {})
    mine = nodes_cpu(ref["step"]) if ref.get("ok") else None
    any_ok = next((r for r in rows.values() if r.get("ok")), None)
    size = (
        f"{any_ok['connections']:,} connections, each on its own channel; "
        f"{any_ok['step']['rate']:,} msg/s to random channels for {any_ok['step']['sent']:,} "
        "messages"
        if any_ok
        else ""
    )
    lines = [
        f"### Many channels (channels): {size}",
        "",
        "CPU is % of one core over the publishing window: the server process, Redis on its "
        "own where the server has one, and both. Lost = not delivered by the end of the drain. "
        "The scenario runs in rounds, interleaved across servers; the row is the round with "
        "the median server process CPU, and every round's is listed. "
        f"The ratio compares server process CPU: below 1, {reference} used less.",
        "",
        "| server | publish msg/s | delivered | lost | disconnects | p50 ms | p99 ms | max ms "
        "| server process CPU % | per round | Redis CPU % | server + Redis CPU % "
        f"| generator CPU % | publisher errors | {reference} ÷ server (process CPU) |",
        "| --- " + "| ---: " * 14 + "|",
    ]
    for peer, r in rows.items():
        if not r.get("ok"):
            lines.append(f"| {peer} | failed: {r.get('error')} |" + " |" * 13)
            continue
        s = r["step"]
        per_round = ", ".join(_fmt(cpu) for cpu in r.get("rounds") or [nodes_cpu(s)])
        lines.append(
            f"| {peer} | {_fmt(s['publishRate'])} | {_fmt(s['received'])} | {_fmt(s['lost'])} "
            f"| {s['disconnects']} | {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} "
            f"| {_fmt(nodes_cpu(s))} | {per_round} | {_cpu(s['cpu'].get('redis'))} "
            f"| {_cpu(s['cpu']['server'])} | {_cpu(s['cpu']['generator'])} "
            f"| {_fmt(r.get('publisherErrors'))} | {_ratio(mine, nodes_cpu(s))} |"
        )
    return [*lines, ""]


def _gc(results: Results) -> list[str]:
    rows = [
        (peer, scenario, r["gc"])
        for peer, scenarios in results.items()
        for scenario, r in scenarios.items()
        if r.get("gc")
    ]
    if not rows:
        return []
    lines = [
        "### kizuna's garbage collection during each scenario (its own /metrics)",
        "",
        "`kizuna_gc_pause_seconds` read as the scenario ended, from a server started for it (the "
        "reported round). A full collection walks every object the process holds; the longest "
        "is given as the histogram bucket it fell in.",
        "",
        "| server | scenario | collections | seconds paused | full collections "
        "| mean full ms | longest full, at most |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer, scenario, gc in rows:
        longest = gc["fullLongestAtMostSeconds"]
        at_most = "—" if longest is None else f"{1000 * longest:g} ms"
        lines.append(
            f"| {peer} | {scenario} | {_fmt(gc['collections'])} | {gc['pausedSeconds']:.3f} "
            f"| {_fmt(gc['full'])} | {_fmt(gc['fullMeanMs'])} | {at_most} |"
        )
    return [*lines, ""]


def _profiles(results: Results) -> list[str]:
    lines: list[str] = []
    for peer, scenarios in results.items():
        for scenario, result in scenarios.items():
            path = result.get("profile")
            if not path:
                continue
            if not Path(path).exists():
                lines += [f"### Profile of {peer} ({scenario}): no output", ""]
                continue
            lines += [
                f"### Profile of {peer} during {scenario} (py-spy, top 10 by self time)",
                "",
                profile_markdown(Path(path), 10),
                "",
            ]
    return lines


def _profiled(results: Results) -> list[str]:
    """The warning a profiled run needs: py-spy's pauses are in its latency and loss figures."""
    if not any(
        result.get("profile") for scenarios in results.values() for result in scenarios.values()
    ):
        return []
    return [
        "**Profiled run.** py-spy stops each Python server to take every sample, so latency, "
        "loss and throughput here are not comparable with an unprofiled run's (in one "
        "channels run kizuna-redis fell 3 s behind and had not delivered 29 % by the end of "
        "the drain; without the profiler, nothing late and nothing lost). Read it for where "
        "the time goes, not for how much.",
        "",
    ]


def _own_plans(plans: dict[str, dict[str, Any]]) -> list[str]:
    """Peers whose fan-out ladder is scaled to them (Socket.IO), as the plan's footnote."""
    if not plans:
        return []
    lines = ["Ladders scaled to the server (Peer.rate_scale):", ""]
    for name, own in plans.items():
        rates = ", ".join(str(r) for r in own["rates"])
        lines.append(f"- **{name}**: rates {rates} msg/s; overload {own['overload_rate']} msg/s")
    return [*lines, ""]


def render(meta: dict[str, Any], peers: dict[str, str], results: Results, reference: str) -> str:
    lines = [
        f"## Run of {meta['date']}",
        "",
        *_external(meta),
        *_profiled(results),
        f"Command: `{meta['command']}`",
        "",
        f"kizuna at: {meta.get('revision', 'unknown')}",
        "",
        f"Machine: {meta['machine']}",
        "",
        "Servers:",
        "",
    ]
    lines += [f"- **{name}**: {text}" for name, text in peers.items()]
    lines += [
        "",
        f"Plan: {meta['plan']}",
        "",
        *_own_plans(meta.get("plans", {})),
        *_fanout(results, reference),
        *_overload(results),
        *_cost(results, reference),
        *_idle(results, reference),
        *_connect(results, reference),
        *_xnode(results, reference),
        *_channels(results, reference),
        *_gc(results),
        *_profiles(results),
    ]
    return "\n".join(lines).rstrip() + "\n"
