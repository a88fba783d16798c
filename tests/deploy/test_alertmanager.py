"""deploy/alertmanager: the routing tree by amtool, inhibition by a real Alertmanager.

The on-call contract: a critical alert pages, a warning goes to chat, anything
else lands in the default receiver, and a warning is muted while a critical
alert of the same name fires on the same node.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.deploy.tools import (
    DEPLOY,
    AlertmanagerProcess,
    alert_rules,
    load_yaml,
    require_tool,
    run_tool,
)

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
PAGER = "pagerduty-critical"
CHAT = "slack-warnings"
DEFAULT = "default-receiver"


def routes_test(*labels: str) -> list[str]:
    """The receivers amtool resolves for an alert with ``labels``."""
    result = run_tool(
        [require_tool("amtool"), "config", "routes", "test", f"--config.file={CONFIG}", *labels]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def test_amtool_check_config() -> None:
    result = run_tool([require_tool("amtool"), "check-config", str(CONFIG)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output
    assert "3 receivers" in output and "1 inhibit rules" in output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical"], PAGER),
        (["severity=warning"], CHAT),
        (["severity=info"], DEFAULT),
        (["alertname=Watchdog"], DEFAULT),
        (["alertname=KizunaBrokerDown", "severity=critical", "instance=kizuna-1:8000"], PAGER),
        (["alertname=KizunaNodeDown", "severity=warning", "instance=kizuna-2:8000"], CHAT),
    ],
)
def test_route(labels: list[str], receiver: str) -> None:
    assert routes_test(*labels) == [receiver]


def test_amtool_verify_fails_on_a_wrong_receiver() -> None:
    """amtool's own verification: the route check above is able to fail."""
    result = run_tool(
        [
            require_tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            f"--verify.receivers={CHAT}",
            "severity=critical",
        ]
    )
    assert result.returncode != 0


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_every_alert_reaches_its_receiver(rule: dict[str, object]) -> None:
    labels = rule["labels"]
    assert isinstance(labels, dict)
    expected = {"critical": PAGER, "warning": CHAT}[labels["severity"]]
    pairs = [f"alertname={rule['alert']}", *(f"{k}={v}" for k, v in labels.items())]
    assert routes_test(*pairs) == [expected]


def test_receivers_hold_placeholders_only() -> None:
    """No real webhook or key is committed: every URL is on a reserved example domain."""
    text = CONFIG.read_text(encoding="utf-8")
    urls = re.findall(r"https?://[^\s\"']+", text)
    assert urls
    for url in urls:
        host = url.split("/")[2]
        assert host.endswith(".example"), url
    config = load_yaml(CONFIG)
    keys = [c["routing_key"] for r in config["receivers"] for c in r.get("pagerduty_configs", [])]
    assert keys and all(key.startswith("REPLACE") for key in keys)


def test_grouping_and_timing_follow_the_guide() -> None:
    route = load_yaml(CONFIG)["route"]
    assert {"alertname", "severity"} <= set(route["group_by"])
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "30s",
        "5m",
        "4h",
    )
    repeat = {r["receiver"]: r.get("repeat_interval") for r in route["routes"]}
    assert repeat == {PAGER: "1h", CHAT: "4h"}


def _alert(name: str, severity: str, instance: str | None) -> dict[str, object]:
    labels = {"alertname": name, "severity": severity}
    if instance is not None:
        labels["instance"] = instance
    now = datetime.now(UTC)
    return {
        "labels": labels,
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def test_critical_inhibits_the_warning_of_the_same_alert_and_node() -> None:
    """A real Alertmanager with the shipped config: which warnings are muted."""
    with AlertmanagerProcess() as alertmanager:
        alertmanager.post_alerts(
            [
                _alert("KizunaBrokerDown", "critical", "kizuna-1:8000"),
                _alert("KizunaBrokerDown", "warning", "kizuna-1:8000"),  # muted
                _alert("KizunaBrokerDown", "warning", "kizuna-2:8000"),  # other node
                _alert("KizunaHighErrorRate", "warning", "kizuna-1:8000"),  # other alert
                # The SLO alerts have no instance: the fast burn's page mutes its ticket.
                _alert("KizunaDeliveryLatencyBudgetBurn", "critical", None),
                _alert("KizunaDeliveryLatencyBudgetBurn", "warning", None),  # muted
            ]
        )
        states = {
            (
                a["labels"]["alertname"],
                a["labels"]["severity"],
                a["labels"].get("instance"),
            ): a["status"]
            for a in alertmanager.alerts()
        }
    assert len(states) == 6
    muted = {key for key, status in states.items() if status["inhibitedBy"]}
    assert muted == {
        ("KizunaBrokerDown", "warning", "kizuna-1:8000"),
        ("KizunaDeliveryLatencyBudgetBurn", "warning", None),
    }
    assert all(states[key]["state"] == "suppressed" for key in muted)
    assert all(status["state"] == "active" for key, status in states.items() if key not in muted)
