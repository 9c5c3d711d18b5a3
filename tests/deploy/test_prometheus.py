"""deploy/prometheus: promtool accepts the config and the rules, the alert unit tests pass, and the rules use only
metrics the service exports."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    K8S,
    METRICS,
    SERIES_NAMES,
    load_yaml,
    metric_names_in,
    require_tool,
)

PROMETHEUS = DEPLOY / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_check_config() -> None:
    proc = promtool("check", "config", CONFIG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The config loads the rule files (check config reports how many it found).
    assert f"SUCCESS: {len(RULES)} rule files found" in proc.stdout + proc.stderr


def test_check_rules() -> None:
    assert RULES, "no rule files"
    proc = promtool("check", "rules", *RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests() -> None:
    assert RULE_TESTS, "no promtool unit tests for the alerts"
    proc = promtool("test", "rules", *RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def alerts() -> list[dict[str, Any]]:
    out = []
    for path in RULES:
        for group in load_yaml(path)["groups"]:
            out += group["rules"]
    return out


def test_alerts_cover_the_basics() -> None:
    rules = alerts()
    exprs = {str(r["alert"]): str(r["expr"]) for r in rules}
    assert any('up{job="lstm-serve"}' in e for e in exprs.values()), "an alert for a replica down"
    assert any("histogram_quantile(0.99" in e and "lstm_serve_request_latency_seconds" in e for e in exprs.values()), (
        "an alert on p99 latency"
    )
    assert any("lstm_serve_sessions_evicted_total" in e for e in exprs.values()), "an alert on evictions"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "for" in rule, rule["alert"]
    tested = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    assert {r["alert"] for r in rules} <= tested, "every alert has a promtool unit test"


def test_rules_use_only_exported_metrics() -> None:
    for rule in alerts():
        for name in metric_names_in(str(rule["expr"])):
            assert name in SERIES_NAMES, f"{rule['alert']}: {name} is not a metric of the service"


def test_scrape_job_matches_the_alerts_and_compose() -> None:
    config = load_yaml(CONFIG)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    job = jobs["lstm-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = sorted(t for sc in job["static_configs"] for t in sc["targets"])
    compose = load_yaml(COMPOSE_FILE)
    replicas = sorted(s for s in compose["services"] if s.startswith("lstm-serve-"))
    assert targets == [f"{r}:8000" for r in replicas]
    # In Kubernetes the ServiceMonitor's job label is the Service's name: the same job="lstm-serve".
    service = load_yaml(K8S / "base" / "service.yaml")
    assert service["metadata"]["name"] == "lstm-serve"


def test_metric_catalogue_matches_the_service() -> None:
    """Dashboards and alerts are written against tests/deploy/support.py:METRICS; the service must export them."""
    try:
        module = importlib.import_module("service.metrics")
    except ModuleNotFoundError as exc:
        if exc.name in {"service.metrics", "service"}:
            pytest.skip("service/metrics.py is not written yet")
        raise
    metrics = module.Metrics()
    exported: dict[str, str] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    missing = sorted(set(METRICS) - set(exported))
    assert not missing, f"metrics the dashboards and alerts use but service/metrics.py does not export: {missing}"
    wrong_type = {n: (t, exported[n]) for n, t in METRICS.items() if exported[n] != t}
    assert not wrong_type, f"metric types differ (expected, exported): {wrong_type}"
