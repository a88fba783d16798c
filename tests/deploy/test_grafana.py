"""deploy/grafana: the dashboard's panels and queries, and the provisioning around it.

Grafana itself is not available here, so the queries are parsed by promtool
(each one becomes a recording rule in a generated rule file) and, in
test_live_prometheus.py, evaluated by a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    DASHBOARD,
    DEPLOY,
    dashboard_expressions,
    load_yaml,
    require_tool,
    run_tool,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"
GUIDE_PANELS = {
    "Active Connections": "stat",
    "Connection Rate": "timeseries",
    "Message Latency (p50/p95/p99)": "timeseries",
    "Error Rate": "gauge",
}


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return result


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def promtool_check_expressions(exprs: list[tuple[str, str]], tmp_path: Path) -> str:
    """Run ``promtool check rules`` on one recording rule per expression; its output."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool([require_tool("promtool"), "check", "rules", str(path)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    output = promtool_check_expressions(exprs, tmp_path)
    assert f"SUCCESS: {len(exprs)} rules found" in output


def test_the_parse_check_catches_a_broken_query(tmp_path: Path) -> None:
    broken = [("broken", "sum by (le (rate(websocket_errors_total[5m]))")]
    with pytest.raises(AssertionError, match="parse error"):
        promtool_check_expressions(broken, tmp_path)


def test_the_guides_four_panels_come_first() -> None:
    first = panels()[:4]
    assert {p["title"]: p["type"] for p in first} == GUIDE_PANELS
    latency = next(p for p in first if p["title"].startswith("Message Latency"))
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]
    assert all("websocket_message_duration_seconds_bucket" in t["expr"] for t in latency["targets"])


@pytest.mark.parametrize(
    ("metric", "grouped_by"),
    [
        ("websocket_active_connections", "transport"),
        ("kizuna_messages_sent_total", "transport"),
        ("kizuna_delivery_latency_seconds_bucket", "le"),
        ("kizuna_broker_up", None),
        ("kizuna_broker_operations_total", "operation"),
        ("kizuna_broker_errors_total", "operation"),
        ("kizuna_client_queue_bytes", None),
        ("kizuna_slow_client_disconnects_total", None),
        ("kizuna_recoveries_total", "result"),
        ("kizuna_frames_sent_total", "transport"),
    ],
)
def test_dashboard_shows(metric: str, grouped_by: str | None) -> None:
    """The panels the issue asks for beyond the guide's four."""
    exprs = [e for _, e in dashboard_expressions() if metric in e]
    assert exprs, f"no panel queries {metric}"
    if grouped_by:
        assert any(f"by ({grouped_by})" in e for e in exprs), exprs


def test_coalescing_factor_is_messages_over_frames() -> None:
    panel = next(p for p in panels() if p["title"].startswith("Coalescing factor"))
    expr = panel["targets"][0]["expr"]
    messages, _, frames = expr.partition(" / ")
    assert "kizuna_messages_sent_total" in messages and "kizuna_frames_sent_total" in frames


def test_panels_are_well_formed() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "instance" in variables["instance"]["definition"]
    for _, expr in dashboard_expressions(substitute=False):
        assert 'instance=~"$instance"' in expr, expr


def test_datasources_provisioned() -> None:
    config = load_yaml(PROVISIONING / "datasources" / "datasources.yml")
    sources = {d["uid"]: d for d in config["datasources"]}
    assert {"prometheus", "loki", "jaeger"} <= set(sources)
    assert sources["prometheus"]["type"] == "prometheus" and sources["prometheus"]["isDefault"]
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["loki"]["url"] == "http://loki:3100"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    assert sum(1 for d in config["datasources"] if d.get("isDefault")) == 1
    # Cross-links point at provisioned uids.
    for field in sources["loki"]["jsonData"]["derivedFields"]:
        assert field["datasourceUid"] in sources
    assert sources["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] in sources


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    config = load_yaml(PROVISIONING / "dashboards" / "kizuna.yml")
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
