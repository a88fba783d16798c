"""The benchmark harness's cheap parts: tokens, specs, the connect table, the --url target.

The measurements themselves are bench/'s business (``python -m bench.run``); here only
what would silently make them wrong: tokens kizuna would refuse or that are all the same,
a report that hides failures or invents server figures for a deployment it cannot see.
The one end-to-end test runs the connect scenario (50 connections) against a real kizuna.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bench import external, instructions, run
from bench.gcstats import gc_pauses
from bench.peer import JWT_SECRET, KIZUNA_CONFIG, PEERS
from bench.report import render
from bench.scenarios import QUICK, _spec
from kizuna.core.auth import JWTAuthenticator, JWTSettings
from tests.support.processes import KizunaProcess, end_child, free_port, wait_for_port

DEPLOYMENT_SECRET = "deployment-secret-0123456789abcdef0123456789"


async def test_each_connection_gets_its_own_token_that_kizuna_accepts() -> None:
    tokens = PEERS["kizuna"].tokens(20)
    assert len(set(tokens)) == 20
    auth = JWTAuthenticator(JWTSettings(secret=JWT_SECRET))
    users = [(await auth.authenticate(t)).user for t in tokens]
    assert users == [f"bench-{i}" for i in range(20)]


def test_servers_without_authentication_get_no_tokens() -> None:
    assert PEERS["py-websockets"].tokens(20) == []


async def test_an_external_target_signs_with_the_deployments_secret() -> None:
    peer = external.external_peer(
        "ws://h/connection/websocket", jwt_secret=DEPLOYMENT_SECRET, token=None
    )
    auth = JWTAuthenticator(JWTSettings(secret=DEPLOYMENT_SECRET))
    assert (await auth.authenticate(peer.tokens(3)[2])).user == "bench-2"
    assert peer.fanout_channel == "chat:bench-fanout"


def test_an_external_target_with_a_token_shares_it() -> None:
    peer = external.external_peer("ws://h/", jwt_secret=None, token="T", namespace="bench")
    assert peer.tokens(5) == ["T"]
    assert peer.token() == "T"
    assert peer.idle_prefix == "bench:bench-room-"
    with pytest.raises(ValueError, match="not both"):
        external.external_peer("ws://h/", jwt_secret="S", token="T")


def test_the_connect_spec_carries_one_token_per_connection() -> None:
    peer = external.external_peer("ws://h/", jwt_secret=DEPLOYMENT_SECRET, token=None)
    spec = _spec("connect", external.ExternalServer(peer, "ws://h/"), QUICK)
    assert spec["connects"] == QUICK.connects
    assert len(set(spec["tokens"])) == QUICK.connects
    assert spec["serverPids"] == []  # not ours: the generator reports no server CPU
    assert spec["rssPid"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "ws://h/"],  # no credentials
        ["--url", "http://h/", "--token", "T"],
        ["--url", "ws://h/", "--token", "T", "--peers", "kizuna"],
        ["--jwt-secret", "S"],  # without --url
        ["--url", "ws://h/", "--token", "T", "--scenarios", "xnode"],  # starts its own nodes
    ],
)
def test_bad_external_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(argv)


def _pass(rate: int, server_cpu: float | None, failed: int = 0) -> dict[str, Any]:
    return {
        "pass": 1,
        "connections": 100,
        "connected": 100 - failed,
        "failed": failed,
        "errors": {"kizuna error 101: invalid token": failed} if failed else {},
        "seconds": 0.5,
        "connectsPerSecond": rate,
        "p50": 10.0,
        "p99": 20.0,
        "max": 25.0,
        "cpu": {"server": server_cpu, "generator": 90.0},
        "cost": {"server": None if server_cpu is None else 300.0, "generator": 200.0},
        "dropped": 0,
        "closeSeconds": 0.1,
        "closed": 100,
    }


def _connect(rate: int, tokens: int, server_cpu: float | None, failed: int = 0) -> dict[str, Any]:
    one = _pass(rate, server_cpu, failed)
    result: dict[str, Any] = {"ok": not failed, "connections": 100, "concurrency": 10}
    result["distinctTokens"] = tokens
    result.update(passes=[one], bestPass=one)
    if failed:
        result.update(error=f"pass 1: {failed} failed, 0 dropped", errors=one["errors"])
    return {"connect": result}


META = {"date": "today", "command": "python -m bench.run", "machine": "m", "plan": "{}"}


def test_the_connect_table_has_ratios_auth_and_failures() -> None:
    results = {
        "kizuna": _connect(1500, 100, 80.0),
        "py-websockets": _connect(1000, 0, 40.0, failed=3),
    }
    text = render(META, {}, results, "kizuna")
    rows: dict[str, str] = {}
    for line in text.splitlines():  # the summary's rows come before every pass's
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0], line)
    assert "JWT, 100 distinct" in rows["| kizuna"]
    assert rows["| py-websockets"].endswith("| 1.50 | 1.00 |")  # 1,500 ÷ 1,000; 300 ÷ 300 µs
    assert "90.0 (busy)" in rows["| kizuna"]  # the generator may be the limit
    assert "kizuna error 101: invalid token × 3" in text


def test_an_external_run_is_labelled_and_shows_no_server_figures() -> None:
    results = {external.NAME: _connect(900, 1, None)}
    text = render({**META, "external": "ws://h/"}, {}, results, external.NAME)
    assert "**External target: ws://h/**" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {external.NAME}"))
    assert "JWT, one shared" in row
    assert row.count("| — ") >= 2  # server CPU % and µs per connect


def _channels(server_cpu: float, ok: bool = True) -> dict[str, Any]:
    step = {
        "rate": 5000,
        "sent": 50000,
        "publishRate": 5000,
        "received": 50000,
        "lost": 0,
        "disconnects": 0,
        "p50": 0.3,
        "p99": 1.0,
        "max": 5.0,
        "cpu": {"server": server_cpu, "generator": 15.0},
    }
    return {"ok": ok, "connections": 2000, "step": step, "publisherErrors": 0}


def test_the_channels_round_reported_is_the_median_by_server_cpu() -> None:
    kept = None
    for cpu in (27.2, 21.5, 23.0):
        kept = run._median_cpu(kept, _channels(cpu))
    assert kept is not None
    assert kept["step"]["cpu"]["server"] == 23.0
    assert kept["rounds"] == [27.2, 21.5, 23.0]
    assert len(kept["runs"]) == 3 and "runs" not in kept["runs"][0]
    two = run._median_cpu(run._median_cpu(None, _channels(30.0)), _channels(20.0))
    assert two["step"]["cpu"]["server"] == 20.0  # of two, the lower
    failed = run._median_cpu(run._median_cpu(None, _channels(0.0, ok=False)), _channels(25.0))
    assert failed["step"]["cpu"]["server"] == 25.0 and failed["rounds"] == [None, 25.0]
    text = render(META, {}, {"kizuna": {"channels": kept}}, "kizuna")
    row = next(line for line in text.splitlines() if line.startswith("| kizuna"))
    assert "| 23.0 | 27.2, 21.5, 23.0 |" in row


@pytest.mark.node
def test_connect_scenario_against_a_running_kizuna(tmp_path: Path) -> None:
    """bench.run --url end to end, small: every connection verified, answered and closed."""
    with KizunaProcess(jwt_secret=DEPLOYMENT_SECRET) as server:
        argv = ["--url", server.ws_url, "--jwt-secret", DEPLOYMENT_SECRET]
        argv += ["--scenarios", "connect", "--connects", "50", "--connect-passes", "1"]
        assert run.main([*argv, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"][external.NAME]
    connect = result["connect"]
    assert connect["ok"], connect
    assert connect["distinctTokens"] == 50
    best = connect["bestPass"]
    assert (best["connected"], best["failed"], best["dropped"], best["closed"]) == (50, 0, 0, 50)
    assert best["cpu"]["server"] is None
    assert "External target" in (tmp_path / "results.md").read_text()


def test_the_batched_publisher_gets_every_publish_answered(tmp_path: Path) -> None:
    """kizuna-batched: each millisecond's publishes in one frame; every one is answered and
    delivered (the probes' 200 in frames of at most 50 commands, then 500 msg/s for 3 s)."""
    argv = ["--quick", "--scenarios", "channels", "--peers", "kizuna-batched"]
    assert run.main([*argv, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"]["kizuna-batched"]
    channels = result["channels"]
    assert channels["ok"], channels
    step = channels["step"]
    assert (step["sent"], step["received"], step["lost"]) == (1500, 1500, 0)
    # One probe per channel, and more only if a round of probes was not all delivered in time.
    assert channels["publisherAcks"] >= 1500 + 200
    assert channels["publisherErrors"] == 0


def test_sigterm_unwinds_so_started_processes_are_stopped(tmp_path: Path) -> None:
    """A killed benchmark (``kill``, ``timeout``) must not leave its servers running."""
    script = tmp_path / "victim.py"
    pid_file = tmp_path / "child.pid"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from bench import procs, run\n"
        "run._unwind_on_sigterm()\n"
        f"child = procs.start(['sleep', '60'], log=Path({str(tmp_path / 'log')!r}))\n"
        "try:\n"
        f"    Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    procs.stop(child)\n"
    )
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    victim = subprocess.Popen([sys.executable, str(script)], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(20) == 128 + signal.SIGTERM
        assert not Path(f"/proc/{child}").exists() or "zombie" in _state(child)
    finally:
        victim.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def test_gc_pauses_are_read_from_a_running_kizunas_metrics() -> None:
    with KizunaProcess() as server:
        pauses = gc_pauses(server.url)
    assert pauses is not None
    # The start-up's gc.collect() is a full collection, timed like any other.
    assert pauses["full"] >= 1 and pauses["fullMeanMs"] > 0
    assert pauses["collections"] >= pauses["full"]
    assert 0 < pauses["fullLongestAtMostSeconds"] <= math.inf
    assert gc_pauses(f"http://127.0.0.1:{free_port()}") is None  # nothing listening


def test_the_report_shows_gc_pauses_where_there_are_any() -> None:
    gc = {
        "collections": 1200,
        "pausedSeconds": 0.9,
        "full": 4,
        "fullMeanMs": 120.0,
        "fullLongestAtMostSeconds": 0.25,
    }
    meta = {"date": "d", "command": "c", "machine": "m", "plan": "{}"}
    results: dict[str, dict[str, Any]] = {
        "kizuna": {"idle": {"ok": False, "error": "x", "gc": gc}},
        "py-websockets": {"idle": {"ok": False, "error": "x"}},
    }
    report = render(meta, {}, results, "kizuna")
    assert "| kizuna | idle | 1,200 | 0.900 | 4 | 120.0 | 250 ms |" in report
    assert "| py-websockets | idle |" not in report
    del results["kizuna"]["idle"]["gc"]
    assert "garbage collection" not in render(meta, {}, results, "kizuna")


def test_a_profiled_run_says_its_delivery_figures_are_not_comparable(tmp_path: Path) -> None:
    meta = {"date": "d", "command": "c", "machine": "m", "plan": "{}"}
    results: dict[str, dict[str, Any]] = {"kizuna": {"channels": {"ok": False, "error": "x"}}}
    assert "Profiled run" not in render(meta, {}, results, "kizuna")
    results["kizuna"]["channels"]["profile"] = str(tmp_path / "profile-kizuna-channels.txt")
    assert "**Profiled run.** py-spy stops each Python server" in render(
        meta, {}, results, "kizuna"
    )


@pytest.mark.parametrize("script", ["py_websockets_server.py", "py_uvicorn_server.py"])
async def test_the_python_peers_speak_the_guides_protocol(script: str) -> None:
    """What the fan-out and channels scenarios need from a peer: subscribe, then a message."""
    port = free_port()
    peer = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(run.__file__).parent / "peers" / script), "--port", str(port)
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        url = f"ws://127.0.0.1:{port}"
        async with websockets.connect(url) as reader, websockets.connect(url) as writer:
            await reader.send(json.dumps({"type": "subscribe", "channel": "chat:peer"}))
            await asyncio.sleep(0.2)  # the guide's protocol does not acknowledge a subscribe
            message = {"type": "message", "channel": "chat:peer", "user": "u", "content": "hi"}
            await writer.send(json.dumps(message))
            got = json.loads(await asyncio.wait_for(reader.recv(), 5))
        assert (got["user"], got["content"]) == ("u", "hi")
        assert abs(got["timestamp"] - time.time() * 1000) < 10_000
    finally:
        await end_child(peer)


async def test_the_instruction_counts_connects_really_connect() -> None:
    with KizunaProcess(jwt_secret=JWT_SECRET) as server:
        await instructions.connects(server.port, 20, 5)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(server.url + "/metrics")).text
    assert 'websocket_connections_total{status="accepted",transport="websocket"} 20.0' in metrics
    assert 'websocket_disconnections_total{code="1000",transport="websocket"} 20.0' in metrics


async def test_the_instruction_counts_publishes_deliver_every_one() -> None:
    """The publish workload: five subscriptions proven by a probe each, then 23 publications
    in bursts of five; the server's own counters see exactly that many, each delivered."""
    with KizunaProcess(jwt_secret=JWT_SECRET, args=["--config", str(KIZUNA_CONFIG)]) as server:
        await instructions.publishes(server.port, "kizuna", 5, 23)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(server.url + "/metrics")).text
    assert 'kizuna_publications_fanned_out_total{namespace="bench"} 28.0' in metrics
    assert 'kizuna_deliveries_total{namespace="bench"} 28.0' in metrics


async def test_the_instruction_counts_publishes_run_on_the_python_peer() -> None:
    port = free_port()
    argv, _ = PEERS["py-websockets"].command(port, {})
    peer = await asyncio.create_subprocess_exec(*argv)
    try:
        await asyncio.to_thread(wait_for_port, port)
        # Waits (at most 120 s a step) until every delivery is in, or raises.
        await asyncio.wait_for(instructions.publishes(port, "py-websockets", 5, 23), 60)
    finally:
        await end_child(peer)


def test_callgrind_counts_a_servers_instructions() -> None:
    """One run under valgrind (about a minute): start-up alone is some 2e9 instructions."""
    counted = instructions.instructions(3, 3, None, free_port())
    assert 1e9 < counted < 1e10
