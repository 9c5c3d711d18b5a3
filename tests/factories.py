"""Small models the tests make: exported to ONNX exactly like the bundled one, but tiny and untrained."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from model.config import ModelConfig
from model.export import export_model
from model.lstm import CharLSTM
from model.onnx_meta import ModelMetadata
from model.tokenizer import CharTokenizer

# The bundled model's alphabet, so the same texts work against tiny and bundled models.
TEST_VOCAB = "\n !\"$&',-.:;?[" + string.digits + string.ascii_uppercase + string.ascii_lowercase


def make_tiny_lstm(
    peephole: bool = False, hidden: int = 16, layers: int = 2, embed: int = 8, seed: int = 0
) -> tuple[CharLSTM, CharTokenizer]:
    """An untrained CharLSTM with weights spread wide enough that its outputs depend on the input."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer(sorted(TEST_VOCAB))
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, embed_size=embed, hidden_size=hidden, num_layers=layers, peephole=peephole
    )
    model = CharLSTM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model, tokenizer


def export_tiny_model(path: Path, **kwargs: object) -> ModelMetadata:
    model, tokenizer = make_tiny_lstm(**kwargs)  # type: ignore[arg-type]
    return export_model(model, tokenizer, path, name="tiny-test-lstm", version="0", corpus="random weights")
