"""Settings: environment variables, flags over environment, and fail-fast validation with clear messages."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service import cli
from service.config import Settings, unknown_env_vars


def test_defaults(tiny_model_path: Path) -> None:
    s = Settings(model_path=tiny_model_path)
    assert (s.port, s.provider, s.state_backend, s.max_generate_tokens) == (8000, "auto", "memory", 1000)
    assert s.max_batch_size >= 1 and s.max_batch_delay_s == s.max_batch_delay_ms / 1000
    assert s.snapshot_path is None and s.log_json is True


def test_environment(monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> None:
    monkeypatch.setenv("LSTM_SERVE_MODEL_PATH", str(tiny_model_path))
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("LSTM_SERVE_PROVIDER", "cpu")
    monkeypatch.setenv("LSTM_SERVE_LOG_LEVEL", "debug")
    monkeypatch.setenv("LSTM_SERVE_LOG_JSON", "false")
    s = Settings()
    assert (s.max_batch_size, s.provider, s.log_level, s.log_json) == (7, "cpu", "DEBUG", False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("provider", "gpu"),
        ("port", 70000),
        ("max_batch_delay_ms", -1),
        ("graph_optimization", "max"),
        ("max_sessions", 0),
        ("session_ttl_s", 0),
        ("state_backend", "disk"),
        ("intra_op_threads", -1),
        ("model_path", "/does/not/exist.onnx"),
        ("snapshot_path", "/no/such/dir/snap"),
        ("unknown_setting", 1),
    ],
)
def test_invalid_settings_fail_fast(tiny_model_path: Path, field: str, value: Any) -> None:
    values: dict[str, Any] = {"model_path": tiny_model_path, field: value}
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    assert field in str(info.value)


def test_cross_field_rules(tiny_model_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_session_ttl_s"):
        Settings(model_path=tiny_model_path, session_ttl_s=100, max_session_ttl_s=10)
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(model_path=tiny_model_path, state_backend="redis", redis_url="http://x")


def test_every_setting_is_a_serve_flag_and_flags_override_env(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
) -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags, name
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "7")
    args = parser.parse_args(["serve", "--model-path", str(tiny_model_path), "--max-batch-size", "3", "--no-log-json"])
    overrides = {k: getattr(args, k) for k in Settings.model_fields if hasattr(args, k)}
    s = Settings(**overrides)
    assert s.max_batch_size == 3 and s.log_json is False and s.model_path == tiny_model_path


def test_serve_with_invalid_settings_exits_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path
) -> None:
    code = cli.main(["serve", "--model-path", str(tiny_model_path), "--max-batch-size", "0", "--provider", "tpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--max-batch-size / LSTM_SERVE_MAX_BATCH_SIZE" in err and "greater than or equal to 1" in err
    assert "--provider / LSTM_SERVE_PROVIDER" in err


def test_unknown_env_vars_are_reported() -> None:
    env = {"LSTM_SERVE_PORT": "1", "LSTM_SERVE_MAX_BATCH": "3", "LSTM_SERVE_SLOW": "1", "HOME": "/"}
    assert unknown_env_vars(env) == ["LSTM_SERVE_MAX_BATCH"]
