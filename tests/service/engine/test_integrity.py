"""Model integrity: an expected SHA-256 is checked before the model is loaded; a corrupt file stops the start."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.app import Serving
from service.engine.ort import ModelLoadError
from tests.service.conftest import SettingsFactory


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncated_copy(path: Path, to: Path) -> Path:
    to.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return to


async def test_matching_sha256_starts(make_settings: SettingsFactory, tiny_model_path: Path) -> None:
    digest = sha256_of(tiny_model_path).upper()  # hex case does not matter
    serving = Serving(make_settings(model_sha256=digest))
    engine = serving.engine
    await serving.start()
    assert engine.ready
    await serving.stop()


async def test_mismatched_sha256_stops_the_start(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings(model_sha256="0" * 64))
    engine = serving.engine
    with pytest.raises(ModelLoadError, match=r"SHA-256 \w+, not the expected 0000"):
        await serving.start()
    assert not engine.ready


async def test_corrupt_model_stops_the_start_with_a_clear_message(
    make_settings: SettingsFactory, tiny_model_path: Path, tmp_path: Path
) -> None:
    corrupt = truncated_copy(tiny_model_path, tmp_path / "corrupt.onnx")
    serving = Serving(make_settings(model_path=corrupt))
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx"):
        await serving.start()


def test_bad_sha256_setting_is_refused(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="model_sha256"):
        make_settings(model_sha256="not-hex")
