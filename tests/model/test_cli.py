"""`lstm-serve train`, `export` and `evaluate` end to end on a tiny model of the real corpus."""

from pathlib import Path

import onnxruntime as ort
import pytest

from model.onnx_meta import ModelMetadata
from service.cli import main


def test_train_export_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, onnx_path = tmp_path / "tiny.pt", tmp_path / "tiny.onnx"
    assert (
        main(
            [
                "train",
                "--out",
                str(ckpt),
                "--steps",
                "4",
                "--eval-every",
                "4",
                "--batch-size",
                "8",
                "--seq-len",
                "16",
                "--hidden-size",
                "8",
                "--embed-size",
                "4",
                "--layers",
                "1",
            ]
        )
        == 0
    )
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path), "--name", "tiny"]) == 0
    card = (tmp_path / "MODEL_CARD.md").read_text()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert meta.name == "tiny" and meta.val_loss is not None and f"{meta.val_loss:.4f}" in card
    capsys.readouterr()
    assert main(["evaluate", "--model", str(onnx_path)]) == 0
    assert f"validation loss {meta.val_loss:.4f} nats/char" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(onnx_path), "--max-loss", "0.5"]) == 1
