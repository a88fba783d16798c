"""A real Prometheus scrapes a live ``kizuna serve`` with the shipped rules loaded.

This is the shipped stack in miniature: Prometheus (Debian's ``prometheus``)
on a free port, scraping one kizuna node every second as job ``kizuna`` and
evaluating deploy/prometheus/rules every second. Every rule must evaluate
without error, every dashboard query must run, and a healthy idle node must
raise no alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.deploy.tools import (
    RULE_FILES,
    PrometheusProcess,
    alert_rules,
    dashboard_expressions,
    recording_rules,
)
from tests.support.processes import KizunaProcess

NEVER = "0001-01-01T00:00:00Z"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} after {timeout}s")


@pytest.fixture(scope="module")
def node() -> Iterator[KizunaProcess]:
    with KizunaProcess() as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(node: KizunaProcess) -> Iterator[PrometheusProcess]:
    """One Prometheus for the module: its discovery hands targets to the scraper
    only every 5 seconds, so the first scrape is that far away."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "kizuna",
                "static_configs": [{"targets": [f"127.0.0.1:{node.port}"]}],
            }
        ],
    }
    with PrometheusProcess(config=config) as server:
        wait_for(lambda: _value(server, 'up{job="kizuna"}') == 1, "kizuna not scraped")
        yield server


def _value(server: PrometheusProcess, promql: str) -> float | None:
    result = server.query(promql)["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_kizuna_and_evaluates_every_rule(
    prometheus: PrometheusProcess,
) -> None:
    assert _value(prometheus, 'kizuna_broker_up{job="kizuna"}') == 1

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(r["lastEvaluation"] != NEVER for r in rules):
            return rules
        return None

    rules = wait_for(evaluated, "rules not evaluated")
    assert len(rules) == len(alert_rules()) + len(recording_rules())
    broken = {(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"}
    assert broken == set()
    # A healthy idle node: nothing pending, nothing firing.
    assert prometheus.api("alerts")["alerts"] == []


def test_every_dashboard_query_runs_against_live_data(prometheus: PrometheusProcess) -> None:
    queries = dict(dashboard_expressions())
    for title, expr in queries.items():
        data = prometheus.query(expr)  # raises on a PromQL error
        assert data["resultType"] in {"vector", "scalar"}, title
    # The scrape-time gauges have values as soon as the node is scraped.
    assert _value(prometheus, queries["Broker up/A"]) == 1
    assert _value(prometheus, queries["Outbound queue depth/A"]) == 0


def test_a_bad_query_is_refused(prometheus: PrometheusProcess) -> None:
    """query() is able to fail: the checks above mean something."""
    with pytest.raises(AssertionError, match="bad_data"):
        prometheus.query("sum by (le (websocket_errors_total)")


def test_core_panels_return_data_under_load(
    node: KizunaProcess, prometheus: PrometheusProcess
) -> None:
    """A short load — connections, subscriptions, publications — and the guide's
    panels (and delivery latency) show it, through the dashboard's own queries."""
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    from kizuna.core.auth import mint_token
    from tests.support.processes import JWT_SECRET

    async def load() -> None:
        sockets = []
        for i in range(5):
            ws = await connect(node.ws_url)
            token = mint_token(JWT_SECRET, f"load-{i}")
            await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
            await ws.recv()
            sub = {"channel": "chat:load"}
            await ws.send(orjson.dumps({"id": 2, "method": "subscribe", "params": sub}))
            await ws.recv()
            sockets.append(ws)
        # Read everything, as a client does: an unread socket would stall the closes.
        readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
        for n in range(40):
            pub = {"channel": "chat:load", "data": n}
            await sockets[n % 5].send(
                orjson.dumps({"id": 10 + n, "method": "publish", "params": pub})
            )
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)  # a few scrapes while the connections are open
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers)

    queries = {
        title: expr.replace("$__rate_interval", "1m").replace('instance=~"$instance"', "")
        for title, expr in dashboard_expressions()
    }
    asyncio.run(load())

    def nonzero(title: str) -> float | None:
        result = prometheus.query(queries[title])["result"]
        values = [float(r["value"][1]) for r in result]
        return max(values) if values and max(values) > 0 else None

    assert wait_for(lambda: nonzero("Connection Rate/A"), "no connection rate")
    assert wait_for(lambda: nonzero("Message Latency (p50/p95/p99)/C"), "no p99")
    assert wait_for(lambda: nonzero("Publications and deliveries/B"), "no deliveries")
    assert wait_for(lambda: nonzero("Delivery latency (publish to fan-out)/C"), "no latency")
    peak = prometheus.query(f"max_over_time(({queries['Active Connections/A']})[5m:1s])")
    assert float(peak["result"][0]["value"][1]) >= 5


async def _drain(ws: Any) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return
