"""Helpers for the deploy/ tests: the real Prometheus tools, and PromQL references.

The monitoring stack is checked by the programs that will run it — promtool,
amtool, prometheus, alertmanager, docker compose — found on PATH. They come
from Debian packages; when one is missing the test fails and names the package
(a skipped check would look like a passing one).

PromQL is not parsed here (promtool and a real Prometheus do that); this module
only pulls out what an expression *refers to* — metric names, label matchers,
grouping labels — so tests can hold those against what kizuna exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.processes import free_port, wait_for_port

__all__ = [
    "DASHBOARD",
    "DEPLOY",
    "DOCS",
    "REPO",
    "RULE_FILES",
    "RULE_TESTS",
    "AlertmanagerProcess",
    "PrometheusProcess",
    "Reference",
    "alert_rules",
    "compose_command",
    "dashboard_expressions",
    "load_yaml",
    "promql_references",
    "recording_rules",
    "require_tool",
    "rule_expressions",
    "run_tool",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCS = REPO / "docs"

APT_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
    "nginx": "nginx",
}


def require_tool(*names: str) -> str:
    """The path of the first of ``names`` on PATH; fails the test (never skips) without it."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    packages = sorted({APT_PACKAGES.get(n, n) for n in names})
    raise AssertionError(
        f"{' or '.join(names)} not found on PATH: install the Debian package(s) "
        f"{', '.join(packages)} (apt-get install -y {' '.join(packages)})"
    )


def run_tool(
    args: Sequence[str], timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output as text; the caller checks the return code."""
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) if it works without an engine, else ``docker-compose``."""
    docker = shutil.which("docker")
    if docker is not None and run_tool([docker, "compose", "version"], 20).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose")]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# --- rules and dashboard -------------------------------------------------------------------


RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kizuna.json"

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}


def _rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for r in _rules() if "record" in r]


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expression) for every alert and recording rule."""
    return [(r.get("alert") or r["record"], r["expr"]) for r in _rules()]


def dashboard_expressions(substitute: bool = True) -> list[tuple[str, str]]:
    """(panel title/refId, expression) for every query of the dashboard.

    With ``substitute``, Grafana's variables are replaced as Grafana would
    before sending the query, so the result is plain PromQL.
    """
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if substitute:
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
            found.append((f"{panel['title']}/{target['refId']}", expr))
    return found


# --- PromQL references --------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan", "atan2"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Reference:
    """What one PromQL expression refers to."""

    metrics: set[str] = field(default_factory=set)
    selectors: list[tuple[str, list[Matcher]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def promql_references(expr: str) -> Reference:
    """Metric names, selectors with their matchers, and grouping labels in ``expr``."""
    ref = Reference()
    # 1. Selectors with braces: name{label op "value", ...}.
    for match in _SELECTOR.finditer(expr):
        name, body = match.group(1), match.group(2)
        matchers = [Matcher(*m.groups()) for m in _MATCHER.finditer(body)]
        rest = _MATCHER.sub("", body).replace(",", "").strip()
        if rest:
            raise ValueError(f"cannot read matchers {body!r} in {expr!r}")
        if name is None:
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            name = names[0] if names else ""
        ref.selectors.append((name, matchers))
        if name:
            ref.metrics.add(name)
    # 2. Drop what is not a metric name: strings, brace bodies, ranges, label lists.
    text = _SELECTOR.sub(lambda m: m.group(1) or "", expr)
    text = _STRING.sub('""', text)
    text = _RANGE.sub("", text)
    for match in _GROUPING.finditer(text):
        ref.grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    # 3. What is left that is neither a function, a keyword nor a number is a metric.
    for match in _IDENT.finditer(text):
        token = match.group(1)
        if token.lower() not in _KEYWORDS:
            ref.metrics.add(token)
    return ref


# --- real servers -------------------------------------------------------------------------


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()}")


@dataclass
class _Server:
    """A tool server on a free 127.0.0.1 port, with a private data directory."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kizuna-deploy-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _start(self, args: list[str], ready_path: str, timeout: float = 20.0) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout)
        _wait_http(self.url + ready_path, self.process, self.log, timeout)

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class PrometheusProcess(_Server):
    """A real ``prometheus`` server with a generated config (scrapes, rule files).

    ``config`` is written as prometheus.yml in a private directory; rule file
    paths in it should be absolute.
    """

    config: dict[str, Any] = field(default_factory=dict)

    def start(self) -> PrometheusProcess:
        binary = require_tool("prometheus")
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self._start(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            "/-/ready",
        )
        return self

    def query(self, promql: str) -> dict[str, Any]:
        """The API's answer to an instant query; raises on a PromQL error."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {response.status_code} {body}")
        data: dict[str, Any] = body["data"]
        return data

    def api(self, path: str) -> Any:
        response = httpx.get(self.url + "/api/v1/" + path, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class AlertmanagerProcess(_Server):
    """A real Alertmanager (Debian's ``prometheus-alertmanager``), clustering off."""

    config_file: Path = DEPLOY / "alertmanager" / "alertmanager.yml"

    def start(self) -> AlertmanagerProcess:
        binary = require_tool("prometheus-alertmanager", "alertmanager")
        self._start(
            [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            "/-/ready",
        )
        return self

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        response = httpx.post(self.url + "/api/v2/alerts", json=alerts, timeout=10)
        assert response.status_code == 200, response.text

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v2/alerts", timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def __enter__(self) -> AlertmanagerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
