"""A plain PyTorch language model (nn.Embedding -> nn.LSTM -> nn.Linear) exported to a file lstm-serve serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from model.contract import check_model, format_report
from model.export_plain import PlainModelError, export_plain_lm
from model.onnx_meta import ModelMetadata

VOCAB = "zyx wvutsrqponmlkjihgfedcba.\n"  # deliberately unsorted: token id i is VOCAB[i]


class PlainLM(nn.Module):
    """The kind of model people train elsewhere."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, bias: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(
            embed, hidden, num_layers=layers, batch_first=True, bias=bias, dropout=0.1 if layers > 1 else 0.0
        )
        self.linear = nn.Linear(hidden, vocab, bias=bias)

    def forward(
        self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, (hn, cn) = self.lstm(self.embedding(ids), (h, c))
        return self.linear(y), hn, cn


@pytest.mark.parametrize(("layers", "bias"), [(2, True), (1, False)])
def test_export_matches_pytorch_and_passes_the_contract(layers: int, bias: bool, tmp_path: Path) -> None:
    torch.manual_seed(3)
    lm = PlainLM(len(VOCAB), 6, 12, layers, bias).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # away from the init, so a wrong gate order would show
    out = tmp_path / "plain.onnx"
    meta = export_plain_lm(lm.embedding, lm.lstm, lm.linear, VOCAB, out, name="plain", corpus="made in a test")
    assert meta.tokenizer.chars == tuple(VOCAB) and meta.config.num_layers == layers

    report = check_model(out)
    assert report.ok, format_report(report)

    ids = torch.tensor([[VOCAB.index(ch) for ch in "hello world."], [VOCAB.index(ch) for ch in "zyx abc.\nabc"]])
    h0, c0 = torch.randn(layers, 2, 12) * 0.5, torch.randn(layers, 2, 12) * 0.5
    with torch.no_grad():
        want = lm(ids, h0, c0)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "h0": h0.numpy(), "c0": c0.numpy()})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-4)
    read = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert read.name == "plain" and read.tokenizer.chars == tuple(VOCAB) and read.corpus == "made in a test"


def test_modules_that_cannot_be_served_are_refused(tmp_path: Path) -> None:
    emb, lin = nn.Embedding(len(VOCAB), 6), nn.Linear(12, len(VOCAB))
    with pytest.raises(PlainModelError, match="bidirectional"):
        export_plain_lm(emb, nn.LSTM(6, 12, bidirectional=True), lin, VOCAB, tmp_path / "x.onnx")
    with pytest.raises(PlainModelError, match="input_size 5 is not the embedding size 6"):
        export_plain_lm(emb, nn.LSTM(5, 12), lin, VOCAB, tmp_path / "x.onnx")
    with pytest.raises(PlainModelError, match="out_features"):
        export_plain_lm(emb, nn.LSTM(6, 12), nn.Linear(12, 3), VOCAB, tmp_path / "x.onnx")
    with pytest.raises(PlainModelError, match="vocabulary"):
        export_plain_lm(emb, nn.LSTM(6, 12), lin, "aa" + VOCAB[2:], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
