"""deploy/prometheus: the scrape config, the alert rules and their unit tests, by promtool.

``promtool test rules`` is the real test of the alerts (deploy/prometheus/tests/);
the tests here run it, prove it can fail, and hold the rule files to the
conventions the on-call relies on: every alert has a severity, a summary, a
description and a runbook that exists, and is shown both firing and silent.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    DEPLOY,
    DOCS,
    RULE_FILES,
    RULE_TESTS,
    alert_rules,
    load_yaml,
    require_tool,
    run_tool,
)

PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
SEVERITIES = {"critical", "warning"}


def test_rule_and_test_files_exist() -> None:
    assert [p.name for p in RULE_FILES] == ["kizuna-alerts.yml"]
    assert len(RULE_TESTS) >= 2


def test_promtool_check_config() -> None:
    result = run_tool([require_tool("promtool"), "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also loads and checks the rule files it names.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run_tool([require_tool("promtool"), "check", "rules", *map(str, RULE_FILES)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(RULE_FILES), output


def test_promtool_test_rules() -> None:
    result = run_tool([require_tool("promtool"), "test", "rules", *map(str, RULE_TESTS)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def _copy_with_rules(tmp_path: Path, rules_text: str, test_name: str) -> str:
    """One rule test file, pointed at a modified copy of the rules."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "kizuna-alerts.yml").write_text(rules_text)
    (tmp_path / "tests").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "tests" / test_name, tmp_path / "tests" / test_name)
    return str(tmp_path / "tests" / test_name)


@pytest.mark.parametrize(
    ("original", "broken", "test_file"),
    [
        (
            "instance:websocket_active_connections:sum > 10000",
            "sum(websocket_active_connections) > 10000",
            "kizuna-alerts.test.yml",
        ),
        ('code!~"1000|1001"', 'code!~"1000"', "kizuna-alerts.test.yml"),
        (
            'runbook_url: "docs/observability.md#kizunabrokerdown"',
            'runbook_url: ""',
            "kizuna-alerts.test.yml",
        ),
        ("(14.4 * 0.01)", "(1.44 * 0.01)", "kizuna-slo.test.yml"),
    ],
    ids=["lost-instance-label", "normal-close-counted", "no-runbook", "wrong-burn-rate"],
)
def test_rule_tests_catch_a_broken_rule(
    tmp_path: Path, original: str, broken: str, test_file: str
) -> None:
    """Each mutation of the rules must turn the promtool tests red."""
    rules = RULE_FILES[0].read_text()
    assert original in rules
    test = _copy_with_rules(tmp_path, rules.replace(original, broken), test_file)
    result = run_tool([require_tool("promtool"), "test", "rules", test])
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


# --- conventions of every alert -----------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a document's headings."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = match.group(1).strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_has_severity_summary_description_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    url = annotations["runbook_url"]
    assert url == f"docs/observability.md#{rule['alert'].lower()}"
    anchor = url.partition("#")[2]
    assert anchor in github_anchors((DOCS / "observability.md").read_text(encoding="utf-8"))


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in RULE_TESTS for test in load_yaml(path)["tests"]]


def _series_identities(test: dict[str, Any]) -> set[tuple[str, str]]:
    """(job, instance) of every input series of a unit test."""
    found = set()
    for series in test["input_series"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))
        found.add((labels.get("job", ""), labels.get("instance", "")))
    return found


def test_every_alert_is_shown_firing_and_silent() -> None:
    """Every (alert, severity) fires in some unit test with its exact annotations,
    and every alert has a case where it must not fire."""
    rules = {(r["alert"], r["labels"]["severity"]) for r in alert_rules()}
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for test in _unit_tests():
        alerted: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            if not case.get("exp_alerts"):
                silent.add(name)
            for alert in case.get("exp_alerts") or []:
                labels = alert["exp_labels"]
                fired.add((name, labels["severity"]))
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                alerted[name].add((labels.get("job", ""), labels.get("instance", "")))
        for name, identities in alerted.items():
            # Some input series of this test (another node, another fleet) never alerts.
            if _series_identities(test) - identities:
                silent.add(name)
    assert rules - fired == set(), "alerts no unit test makes fire"
    assert {name for name, _ in rules} - silent == set(), "alerts never shown silent"


def test_prometheus_yml_scrapes_the_stack() -> None:
    config = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert targets["kizuna"] == ["kizuna-1:8000", "kizuna-2:8000"]
    assert jobs["kizuna"].get("metrics_path", "/metrics") == "/metrics"
    assert {t for name, ts in targets.items() if name.startswith("otel-collector") for t in ts} == {
        "otel-collector:8888",
        "otel-collector:8889",
    }
    alertmanagers = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert alertmanagers == ["alertmanager:9093"]
    # The KizunaNodeDown alert selects up{job="kizuna"}: the job name is part of the contract.
    assert 'up{job="kizuna"}' in RULE_FILES[0].read_text()
    assert config["rule_files"] == ["rules/*.yml"]


def test_rule_files_are_plain_yaml_without_tabs() -> None:
    for path in [*RULE_FILES, *RULE_TESTS, PROMETHEUS_YML]:
        text = path.read_text(encoding="utf-8")
        assert "\t" not in text, path
        yaml.safe_load(text)
