"""deploy/docker-compose.yml and the files its services read.

There is no Docker engine here, so the stack cannot be started. What can be
checked without one is checked: the compose file against the compose
specification (``docker compose config``), every file a service mounts, every
container path a service's command names, the host names the configs point at,
kizuna's own settings (through kizuna's config loader), and the image's build
inputs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from kizuna.config import load_config
from tests.deploy.tools import DEPLOY, REPO, compose_command, load_yaml, run_tool

COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {
    "kizuna-1",
    "kizuna-2",
    "redis",
    "otel-collector",
    "prometheus",
    "alertmanager",
    "grafana",
    "jaeger",
    "loki",
}


def compose() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(COMPOSE)
    return result


def compose_config(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` with a clean environment (no KIZUNA_* from outside)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return run_tool([*compose_command(), "-f", str(path), "config"], 60, env=env)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file validated against the spec, anchors and ${VARS} resolved."""
    result = compose_config(COMPOSE, tmp_path_factory.mktemp("compose-home"))
    assert result.returncode == 0, result.stdout + result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), PurePosixPath(target)))
    return mounts


def test_compose_config_is_valid(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) >= SERVICES
    profiles = {n: s.get("profiles") for n, s in compose()["services"].items()}
    # The default `up` starts the stack the guide draws; ELK is opt-in.
    assert {n for n, p in profiles.items() if not p} == SERVICES


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator above is able to say no: a misspelt key breaks the spec."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text()
    broken.write_text(
        text.replace("    restart: unless-stopped\n", "    restarts: unless-stopped\n", 1)
    )
    result = compose_config(broken, tmp_path)
    assert result.returncode != 0
    assert "restarts" in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_every_mounted_file_exists(name: str) -> None:
    service = compose()["services"][name]
    for host, container in bind_mounts(service):
        assert host.exists(), f"{name} mounts {host}, which does not exist"
        assert DEPLOY in host.parents, f"{name} mounts {host}, outside deploy/"
        # A file mounted on a path with an extension, a folder on one without.
        assert host.is_file() == bool(container.suffix), f"{name}: {host} -> {container}"


def _container_file(service: dict[str, Any], path: str) -> Path | None:
    """The host file behind ``path`` inside the container, through the bind mounts."""
    target = PurePosixPath(path)
    for host, container in bind_mounts(service):
        if target == container:
            return host
        if container in target.parents:
            return host / target.relative_to(container)
    return None


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_config_files_named_in_commands_are_mounted(name: str) -> None:
    service = compose()["services"][name]
    command = service.get("command", [])
    args = command if isinstance(command, list) else command.split()
    for arg in args:
        match = re.match(r"-{1,2}config(?:\.file)?=(/\S+)", arg)
        if match:
            host = _container_file(service, match.group(1))
            assert host is not None and host.is_file(), f"{name}: {arg} is not a mounted file"


def test_prometheus_rule_files_resolve_inside_the_mount() -> None:
    service = compose()["services"]["prometheus"]
    config_file = _container_file(service, "/etc/prometheus/prometheus.yml")
    assert config_file is not None
    for pattern in load_yaml(config_file)["rule_files"]:
        assert sorted(config_file.parent.glob(pattern)), pattern


def test_grafana_home_dashboard_is_mounted() -> None:
    service = compose()["services"]["grafana"]
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host = _container_file(service, home)
    assert host is not None and host.is_file()


def _hosts_in(value: Any) -> set[str]:
    """Host names in the URLs and host:port strings of a parsed config."""
    found: set[str] = set()
    if isinstance(value, dict):
        for item in value.values():
            found |= _hosts_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= _hosts_in(item)
    elif isinstance(value, str):
        for match in re.finditer(r"(?:https?://)?([a-z][a-z0-9-]*):(\d{2,5})\b", value):
            found.add(match.group(1))
    return found


@pytest.mark.parametrize(
    "config",
    [
        "prometheus/prometheus.yml",
        "grafana/provisioning/datasources/datasources.yml",
        "otel-collector/config.yaml",
    ],
)
def test_configs_point_at_compose_services(config: str) -> None:
    hosts = _hosts_in(load_yaml(DEPLOY / config)) - {"localhost", "http", "https"}
    assert hosts, config
    assert hosts <= set(compose()["services"]), hosts - set(compose()["services"])


def test_kizuna_nodes_have_valid_settings(resolved: dict[str, Any]) -> None:
    """The KIZUNA_* variables of both nodes pass kizuna's own config loader."""
    services = resolved["services"]
    for name in ("kizuna-1", "kizuna-2"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        config = load_config(env={k: v for k, v in env.items() if k.startswith("KIZUNA_")})
        assert (config.host, config.port) == ("0.0.0.0", 8000)
        assert config.broker == "redis://redis:6379/0"
        assert config.log_format == "json"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"service.instance.id={name}"
    # The node names are the scrape targets.
    targets = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert targets["static_configs"][0]["targets"] == ["kizuna-1:8000", "kizuna-2:8000"]


def test_image_builds_from_the_repository() -> None:
    services = compose()["services"]
    for name in ("kizuna-1", "kizuna-2"):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
    # Dockerfile.dockerignore (BuildKit's per-Dockerfile ignore) keeps those sources.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!src"} <= set(ignore)
    extras = re.search(r'pip install --no-cache-dir "\.\[([a-z,]+)\]"', dockerfile)
    assert extras is not None
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras.group(1).split(","):
        assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), extra
