"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import export_tiny_model
from tests.redis_server import RedisServer


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
