"""The helpers the deploy tests stand on: tool lookup and PromQL references."""

from __future__ import annotations

import pytest

from tests.deploy.tools import promql_references, require_tool


def test_a_missing_tool_fails_with_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never a skip: the failure names the Debian package to install."""
    monkeypatch.setenv("PATH", "")
    with pytest.raises(AssertionError, match=r"apt-get install -y prometheus\)$"):
        require_tool("promtool")
    with pytest.raises(AssertionError, match=r"apt-get install -y prometheus-alertmanager\)$"):
        require_tool("prometheus-alertmanager", "alertmanager")
    with pytest.raises(AssertionError, match=r"apt-get install -y docker-compose\)$"):
        require_tool("docker-compose")


def test_references_of_a_rule_expression() -> None:
    ref = promql_references(
        "histogram_quantile(0.99, sum by (job, le) ("
        'rate(websocket_message_duration_seconds_bucket{code!~"1000|1001", le="1.0"}[5m])))'
        " / on (job) group_left instance:kizuna_x:rate5m"
    )
    assert ref.metrics == {"websocket_message_duration_seconds_bucket", "instance:kizuna_x:rate5m"}
    assert ref.grouping == {"job", "le"}
    ((name, matchers),) = ref.selectors
    assert name == "websocket_message_duration_seconds_bucket"
    assert [(m.label, m.op, m.value) for m in matchers] == [
        ("code", "!~", "1000|1001"),
        ("le", "=", "1.0"),
    ]


def test_functions_keywords_numbers_and_strings_are_not_metrics() -> None:
    ref = promql_references(
        "sum without (transport) (increase(kizuna_deliveries_total[1h] offset 5m)) > bool 1e3"
        ' and vector(0) or label_replace(up, "a", "$1", "b", "(.*)")'
    )
    assert ref.metrics == {"kizuna_deliveries_total", "up"}
    assert ref.grouping == {"transport"}


def test_a_name_selector_without_a_metric_name() -> None:
    ref = promql_references('{__name__="kizuna_broker_up", instance="a:1"}')
    assert ref.metrics == {"kizuna_broker_up"}
