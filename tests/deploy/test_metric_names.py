"""The rules and the dashboard ask only for what kizuna exports.

A misspelled metric, label or bucket makes a query silently empty: the panel
shows "No data" and the alert never fires. So every metric name, label matcher,
grouping label and ``le`` bucket the rules and the dashboard use is held against
an exposition of kizuna's own Metrics (after one of every hook event), and the
metric families against what a live ``kizuna serve`` answers on /metrics.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.deploy.conftest import EVENT_CALLS, Exposition, node_event_names
from tests.deploy.tools import (
    dashboard_expressions,
    promql_references,
    recording_rules,
    rule_expressions,
)
from tests.support.processes import KizunaProcess

# Labels Prometheus attaches at scrape time, and metrics it makes itself.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_METRICS = {"up"}


def check_expression(expr: str, exposition: Exposition) -> list[str]:
    """Everything ``expr`` refers to that kizuna does not export, as messages."""
    problems = []
    recorded = {r["record"] for r in recording_rules()}
    ref = promql_references(expr)
    all_labels = set().union(*exposition.labels.values()) | TARGET_LABELS
    for name in sorted(ref.metrics):
        if ":" in name:
            if name not in recorded:
                problems.append(f"recording rule {name} is not defined")
        elif name not in exposition.labels and name not in PROMETHEUS_METRICS:
            problems.append(f"metric {name} is not exported")
    for name, matchers in ref.selectors:
        known = exposition.labels.get(name, set()) | TARGET_LABELS
        for m in matchers:
            if m.label not in known and name not in PROMETHEUS_METRICS and ":" not in name:
                problems.append(f"{name} has no label {m.label!r}")
                continue
            if m.label in TARGET_LABELS or ":" in name or name in PROMETHEUS_METRICS:
                continue
            seen = exposition.values.get((name, m.label), set())
            if m.op == "=" and m.value not in seen:
                problems.append(f"{name}{{{m.label}={m.value!r}}} matches nothing: {sorted(seen)}")
            if m.op == "=~" and not any(re.fullmatch(m.value, v) for v in seen):
                problems.append(f"{name}{{{m.label}=~{m.value!r}}} matches nothing: {sorted(seen)}")
    for label in sorted(ref.grouping - all_labels):
        problems.append(f"grouping by {label!r}, which no metric has")
    return problems


def test_event_calls_name_real_events() -> None:
    """The fixture drives every NodeEvents method (those not in EVENT_CALLS with
    default arguments); a stale entry here would drive nothing."""
    assert set(EVENT_CALLS) <= node_event_names()


def test_exposition_has_every_series_kind(exposition: Exposition) -> None:
    for histogram in ("websocket_message_duration_seconds", "kizuna_delivery_latency_seconds"):
        for suffix in ("_bucket", "_count", "_sum"):
            assert histogram + suffix in exposition.labels
    assert exposition.families["websocket_connections"] == "counter"
    assert "websocket_connections_total" in exposition.labels
    for gauge in ("kizuna_client_queue_bytes", "kizuna_channels_active", "kizuna_broker_up"):
        assert exposition.families[gauge] == "gauge"


@pytest.mark.parametrize(("name", "expr"), rule_expressions(), ids=lambda v: str(v)[:60])
def test_rule_references_exported_metrics(name: str, expr: str, exposition: Exposition) -> None:
    assert check_expression(expr, exposition) == []


@pytest.mark.parametrize(("name", "expr"), dashboard_expressions(), ids=lambda v: str(v)[:60])
def test_dashboard_references_exported_metrics(
    name: str, expr: str, exposition: Exposition
) -> None:
    assert check_expression(expr, exposition) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            "rate(websocket_connection_total[5m])",
            "metric websocket_connection_total is not exported",
        ),
        ('websocket_connections_total{state="rejected"}', "has no label 'state'"),
        ('websocket_connections_total{status="refused"}', "matches nothing"),
        ('kizuna_delivery_latency_seconds_bucket{le="0.2"}', "matches nothing"),
        ('websocket_errors_total{code=~"9.."}', "matches nothing"),
        ("sum by (channel) (kizuna_deliveries_total)", "grouping by 'channel'"),
        ("instance:nothing:rate5m > 1", "recording rule instance:nothing:rate5m is not defined"),
    ],
)
def test_the_check_catches_mistakes(expr: str, problem: str, exposition: Exposition) -> None:
    problems = check_expression(expr, exposition)
    assert any(problem in p for p in problems), problems


def _family(sample: str, families: dict[str, str]) -> str | None:
    """The metric family a sample name belongs to, as a live exposition names them."""
    for suffix in ("", "_total", "_bucket", "_count", "_sum"):
        if suffix and not sample.endswith(suffix):
            continue
        base = sample.removesuffix(suffix) if suffix else sample
        if base in families:
            return base
    return None


def test_live_server_exports_every_family_used(kizuna: KizunaProcess) -> None:
    """A real ``kizuna serve`` declares every family the rules and the dashboard use
    (labelled families have HELP/TYPE lines before their first sample)."""
    response = httpx.get(kizuna.url + "/metrics", timeout=5)
    assert response.status_code == 200
    live = Exposition.parse(response.text)
    used = {
        name
        for _, expr in rule_expressions() + dashboard_expressions()
        for name in promql_references(expr).metrics
        if ":" not in name and name not in PROMETHEUS_METRICS
    }
    missing = sorted(name for name in used if _family(name, live.families) is None)
    assert missing == []
    assert live.families["kizuna_broker_up"] == "gauge"
    assert "kizuna_broker_up" in live.labels  # the scrape-time gauges are real samples
