"""deploy/otel-collector, deploy/loki and deploy/logstash: the telemetry pipelines.

No collector, Loki or Logstash binary is available here (nor packaged for
Debian), so these tests hold the configs to their structure — every pipeline
names components that exist, processors in the order the collector requires,
ports that the other configs use — and hold the log pipelines to the log lines
a real ``kizuna serve`` writes.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from tests.deploy.tools import DEPLOY, load_yaml
from tests.support.processes import KizunaProcess

COLLECTOR = DEPLOY / "otel-collector" / "config.yaml"
LOKI = DEPLOY / "loki" / "config.yaml"
LOGSTASH = DEPLOY / "logstash" / "pipeline" / "kizuna.conf"


def collector() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(COLLECTOR)
    return result


def test_collector_pipelines_use_defined_components() -> None:
    config = collector()
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{name}: {component} is not defined"
    used = {c for p in pipelines.values() for kind in p.values() for c in kind}
    defined = {c for kind in ("receivers", "processors", "exporters") for c in config[kind]}
    assert defined == used, "a defined component is in no pipeline"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


def test_collector_limits_memory_before_batching() -> None:
    for name, pipeline in collector()["service"]["pipelines"].items():
        assert pipeline["processors"] == ["memory_limiter", "batch"], name


def test_collector_receives_otlp_on_both_protocols() -> None:
    protocols = collector()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    for pipeline in collector()["service"]["pipelines"].values():
        assert pipeline["receivers"] == ["otlp"]


def test_collector_exports_to_jaeger_prometheus_and_loki() -> None:
    config = collector()
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    # The contrib `loki` exporter is gone: logs go to Loki's native OTLP endpoint.
    assert not any(e.split("/")[0] == "loki" for e in config["exporters"])
    (logs_exporter,) = pipelines["logs"]["exporters"]
    assert logs_exporter.split("/")[0] == "otlphttp"
    assert config["exporters"][logs_exporter]["endpoint"] == "http://loki:3100/otlp"
    assert "removed" in COLLECTOR.read_text() and "/otlp" in COLLECTOR.read_text()


def test_prometheus_scrapes_the_collector_ports() -> None:
    config = collector()
    exporter_port = int(config["exporters"]["prometheus"]["endpoint"].rpartition(":")[2])
    (reader,) = config["service"]["telemetry"]["metrics"]["readers"]
    telemetry = reader["pull"]["exporter"]["prometheus"]
    assert telemetry["host"] == "0.0.0.0"
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
    assert f"otel-collector:{exporter_port}" in targets
    assert f"otel-collector:{telemetry['port']}" in targets


def test_loki_is_a_complete_loki3_config() -> None:
    config = load_yaml(LOKI)
    (schema,) = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == (
        "tsdb",
        "v13",
        "filesystem",
    )
    assert schema["index"]["period"] == "24h"
    assert config["limits_config"]["allow_structured_metadata"] is True
    assert config["auth_enabled"] is False
    assert config["server"]["http_listen_port"] == 3100
    if config["compactor"].get("retention_enabled"):
        assert config["compactor"]["delete_request_store"] == "filesystem"
    # Every path Loki writes is inside the volume compose mounts at /loki.
    paths = [
        config["storage_config"]["tsdb_shipper"]["active_index_directory"],
        config["storage_config"]["tsdb_shipper"]["cache_location"],
        config["storage_config"]["filesystem"]["directory"],
        config["compactor"]["working_directory"],
        config["common"]["path_prefix"],
    ]
    volumes = load_yaml(DEPLOY / "docker-compose.yml")["services"]["loki"]["volumes"]
    assert "loki-data:/loki" in volumes
    assert all(p == "/loki" or p.startswith("/loki/") for p in paths), paths


def test_logstash_pipeline_reads_kizuna_json_lines() -> None:
    text = LOGSTASH.read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert code.count("{") == code.count("}")
    assert re.search(r"input\s*\{\s*tcp\s*\{[^}]*port\s*=>\s*5000", code)
    assert re.search(r"codec\s*=>\s*json_lines", code)
    assert 'index => "kizuna-logs-%{+YYYY.MM.dd}"' in code
    assert re.search(r'if \[kizuna\]\[level\] in \["error", "critical"\]', code)
    assert re.search(r'add_tag\s*=>\s*\["alert"\]', code)
    assert 'match => ["[kizuna][timestamp]", "ISO8601"]' in code


def test_log_pipelines_match_real_kizuna_log_lines() -> None:
    """The fields Logstash and Grafana read are the ones kizuna writes."""
    with KizunaProcess(env={"KIZUNA_LOG_LEVEL": "info", "KIZUNA_LOG_FORMAT": "json"}) as server:
        output = server.output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines, output
    for line in lines:
        assert line["level"] == line["level"].lower()  # Logstash compares lowercase
        assert line["service"] == "kizuna"
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None  # ISO 8601 with a zone, for Logstash's date filter
    # Grafana's Loki datasource turns trace_id into a Jaeger link with this regex;
    # kizuna's JSON renderer writes `"key": "value"`.
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml")
    loki = next(d for d in datasources["datasources"] if d["uid"] == "loki")
    (field,) = loki["jsonData"]["derivedFields"]
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    rendered = json.dumps({**lines[0], "trace_id": trace_id})
    match = re.search(field["matcherRegex"], rendered)
    assert match is not None and match.group(1) == trace_id
