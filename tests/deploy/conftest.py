"""Fixtures for the deploy/ tests: an exposition of every metric kizuna exports."""

from __future__ import annotations

import inspect
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kizuna.core.events import NodeEvents
from kizuna.observability import Metrics

# Calls of every NodeEvents method, with label values that rules and dashboards
# may filter on: both connection statuses, both recovery results, a command
# error code and a refusal code, a normal and an abnormal close.
EVENT_CALLS: dict[str, list[dict[str, Any]]] = {
    "connection_opened": [{}],
    "connection_rejected": [{"code": 4002}],
    "connection_closed": [{"code": 1000}, {"code": 3002}],
    "command_handled": [{"seconds": 0.002, "error": 0}, {"seconds": 0.3, "error": 113}],
    "fanned_out": [{"latency": 0.004}, {"latency": 0.2, "traceparent": None}],
    "slow_client": [{}],
    "frames_written": [{"frames": 2}],
    "recovery": [{"recovered": True}, {"recovered": False}],
    "auth_failed": [{"code": 4002}],
    "broker_operation": [{"ok": True}, {"ok": False}],
}
# Any other argument an event takes, by parameter name: events grow parameters,
# and an event missing above is called once with these.
ARGUMENTS: dict[str, Any] = {
    "transport": "websocket",
    "namespace": "chat",
    "method": "publish",
    "operation": "publish",
    "recipients": 3,
    "messages": 3,
    "nbytes": 120,
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "limit": "connections",
}


BY_TYPE: dict[Any, Any] = {int: 1, float: 0.01, str: "test", bool: True}
"""A value for a parameter neither list names, by its annotation."""


def call_event(target: object, event: str, given: dict[str, Any]) -> None:
    """Call ``target.event`` with ``given``, ARGUMENTS, or a value of the right type."""
    method = getattr(target, event)
    hints = typing.get_type_hints(method)
    kwargs: dict[str, Any] = {}
    for name in inspect.signature(method).parameters:
        if name in given:
            kwargs[name] = given[name]
        elif name in ARGUMENTS:
            kwargs[name] = ARGUMENTS[name]
        else:
            kinds = list(typing.get_args(hints.get(name)) or [hints.get(name)])
            known = [BY_TYPE[k] for k in kinds if k in BY_TYPE]
            if not known:
                raise AssertionError(
                    f"NodeEvents.{event} has a parameter {name!r} of type {hints.get(name)}"
                    " this test cannot fill: add a value to ARGUMENTS in tests/deploy/conftest.py"
                )
            kwargs[name] = known[0]
    method(**kwargs)


@dataclass
class Exposition:
    """Sample names, their label names and label values, as a scrape would see them."""

    text: str
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        labels: dict[str, set[str]] = defaultdict(set)
        values: dict[tuple[str, str], set[str]] = defaultdict(set)
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                labels[sample.name].update(sample.labels)
                for name, value in sample.labels.items():
                    values[(sample.name, name)].add(value)
        return cls(text, dict(labels), dict(values), families)


def node_event_names() -> set[str]:
    return {name for name in vars(NodeEvents) if not name.startswith("_")}


@pytest.fixture(scope="session")
def exposition() -> Exposition:
    """kizuna's Metrics after every NodeEvents method, plus the scrape-time gauges."""
    metrics = Metrics()
    metrics.watch(lambda: {"queue_bytes": 10.0, "channels": 1.0, "broker_up": 1.0})
    for event in sorted(node_event_names()):
        for given in EVENT_CALLS.get(event, [{}]):
            call_event(metrics, event, given)
    return Exposition.parse(generate_latest(metrics.registry).decode())
