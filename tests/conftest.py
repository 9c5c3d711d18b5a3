"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import export_tiny_model


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
