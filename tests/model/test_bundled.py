"""The committed model: small enough, self-describing, and at or under the quality bar through ONNX Runtime."""

import subprocess
import sys

import onnxruntime as ort

from model.onnx_meta import ModelMetadata
from model.paths import BUNDLED_CARD, BUNDLED_MODEL

QUALITY_BAR = 1.60  # nats per character on the held-out plays


def test_bundled_model_is_committed_and_small() -> None:
    assert BUNDLED_MODEL.is_file() and BUNDLED_CARD.is_file()
    assert BUNDLED_MODEL.stat().st_size <= 16 * 1024 * 1024


def test_bundled_model_carries_everything_needed_to_serve_it() -> None:
    sess = ort.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert meta.name == "shakespeare-lstm" and meta.config.num_layers == 2
    assert meta.val_loss is not None and meta.val_loss <= QUALITY_BAR
    assert meta.tokenizer.decode(meta.tokenizer.encode("To be, or not to be")) == "To be, or not to be"
    assert meta.fingerprint in BUNDLED_CARD.read_text()


def test_evaluate_command_measures_the_bar_through_onnx_runtime() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "evaluate", "--max-loss", str(QUALITY_BAR)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nats/char" in out.stdout and "through ONNX Runtime" in out.stdout
