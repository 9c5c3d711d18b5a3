"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import export_tiny_model
from tests.redis_server import RedisServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` (the long soak) run only with LSTM_SERVE_SLOW=1; their short forms always run."""
    if os.environ.get("LSTM_SERVE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="a long test: run it with LSTM_SERVE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny plain-LSTM ONNX model (2 layers, hidden 16) with the bundled model's vocabulary."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    export_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_peephole_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-peephole.onnx"
    export_tiny_model(path, peephole=True)
    return path


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real, empty redis-server on a free loopback port (skips if redis-server is not installed)."""
    server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
