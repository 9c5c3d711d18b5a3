"""deploy/grafana: the provisioned datasource points at the compose Prometheus, and the dashboard is valid JSON
whose every query is valid PromQL over metrics the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    METRICS,
    REPO_ROOT,
    SERIES_NAMES,
    load_yaml,
    metric_names_in,
    require_tool,
)

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "lstm-serve.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "lstm-serve.yml"

# What the dashboard must show, as the metric behind each.
REQUIRED = {
    "requests/s": "lstm_serve_requests_total",
    "latency": "lstm_serve_request_latency_seconds",
    "batch size": "lstm_serve_batch_size",
    "queue wait": "lstm_serve_queue_wait_seconds",
    "active sessions": "lstm_serve_active_sessions",
    "evictions": "lstm_serve_sessions_evicted_total",
    "time to first token": "lstm_serve_time_to_first_token_seconds",
    "tokens/s": "lstm_serve_tokens_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return out


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in panels(dashboard) for t in p["targets"]]


def datasource_uid() -> str:
    sources = load_yaml(DATASOURCES)["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1
    return str(prometheus[0]["uid"])


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "lstm-serve"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_exported_metrics(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["targets"], f"panel {panel['title']} has no query"
    for panel, target in targets(dashboard):
        names = metric_names_in(target["expr"])
        assert names, f"panel {panel['title']}: {target['expr']} uses no lstm_serve_ metric"
        for name in names:
            assert name in SERIES_NAMES, f"panel {panel['title']}: {name} is not a metric of the service"
            if name.endswith("_bucket"):
                assert "histogram_quantile(" in target["expr"], f"panel {panel['title']}: raw buckets"
            if METRICS[SERIES_NAMES[name]] == "counter":
                assert re.search(rf"(rate|increase)\({name}\b", target["expr"]), (
                    f"panel {panel['title']}: plot the rate of counter {name}, not its value"
                )


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    used = {SERIES_NAMES[n] for _, t in targets(dashboard) for n in metric_names_in(t["expr"])}
    missing = {what: metric for what, metric in REQUIRED.items() if metric not in used}
    assert not missing, f"the dashboard lacks: {missing}"
    latency = [t["expr"] for _, t in targets(dashboard) if "lstm_serve_request_latency_seconds_bucket" in t["expr"]]
    assert any("histogram_quantile(0.5," in e for e in latency), "p50 latency"
    assert any("histogram_quantile(0.99," in e for e in latency), "p99 latency"


def test_queries_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = datasource_uid()
    for panel, target in targets(dashboard):
        for where in (panel, target):
            assert where["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid
        if variable["type"] == "query":
            assert metric_names_in(json.dumps(variable["query"])), variable["name"]


def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule, with Grafana's variables filled in."""
    promtool = require_tool("promtool")
    variables = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
    variables |= {f"${v['name']}": v.get("allValue") or ".*" for v in dashboard["templating"]["list"]}
    rules = []
    for panel, target in targets(dashboard):
        expr = target["expr"]
        for name in sorted(variables, key=len, reverse=True):
            expr = expr.replace(name, variables[name])
        assert "$" not in expr, f"panel {panel['title']}: unknown variable in {expr}"
        rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_datasource_provisioning_points_at_prometheus() -> None:
    sources = load_yaml(DATASOURCES)
    assert sources["apiVersion"] == 1
    prometheus = next(s for s in sources["datasources"] if s["type"] == "prometheus")
    assert prometheus["access"] == "proxy"
    assert prometheus["isDefault"] is True
    compose = load_yaml(COMPOSE_FILE)["services"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)/?", prometheus["url"]).groups()  # type: ignore[union-attr]
    assert host in compose and "prom/prometheus" in compose[host]["image"]
    assert any(p.endswith(f":{port}") for p in compose[host]["ports"])


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    providers = load_yaml(PROVIDERS)["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    in_container = providers[0]["options"]["path"]
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in grafana["volumes"])}
    assert (REPO_ROOT / mounts[in_container]).resolve() == DASHBOARD.parent
    assert (REPO_ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{in_container}/{DASHBOARD.name}"
