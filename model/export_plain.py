"""A language model made elsewhere -> a file lstm-serve serves: `nn.Embedding -> nn.LSTM -> nn.Linear` with a
vocabulary (one character per token id) becomes the contract's graph (model/contract.py), metadata inside.

PyTorch's LSTM orders its gates (i, f, g, o), as CharLSTM does (i, f, c, o), and its cell is the notes' one, so the
weights map across unchanged; its two biases are summed into CharLSTM's one. The graph is then written by
model/export.py, exactly as a model trained here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig
from model.export import export_model
from model.lstm import CharLSTM
from model.onnx_meta import ModelMetadata
from model.tokenizer import CharTokenizer


class PlainModelError(ValueError):
    """The modules cannot be exported as they are; the message says which and why."""


def _check(embedding: nn.Embedding, lstm: nn.LSTM, linear: nn.Linear, vocab: int) -> None:
    problems = []
    if embedding.num_embeddings != vocab:
        problems.append(f"nn.Embedding has {embedding.num_embeddings} rows but the vocabulary {vocab} characters")
    if embedding.max_norm is not None:
        problems.append("nn.Embedding(max_norm=...) rescales rows when looked up; save it without max_norm")
    if lstm.input_size != embedding.embedding_dim:
        problems.append(f"nn.LSTM input_size {lstm.input_size} is not the embedding size {embedding.embedding_dim}")
    if lstm.bidirectional:
        problems.append("a bidirectional nn.LSTM reads the future: a streaming server cannot run it")
    if lstm.proj_size:
        problems.append("nn.LSTM(proj_size=...) is not supported (the state h must be the hidden size)")
    if linear.in_features != lstm.hidden_size:
        problems.append(f"nn.Linear in_features {linear.in_features} is not the LSTM hidden size {lstm.hidden_size}")
    if linear.out_features != vocab:
        problems.append(f"nn.Linear out_features {linear.out_features} is not the vocabulary size {vocab}")
    if problems:
        raise PlainModelError("; ".join(problems))


def to_char_lstm(embedding: nn.Embedding, lstm: nn.LSTM, linear: nn.Linear, vocab: int) -> CharLSTM:
    """The same model as a CharLSTM (float32, CPU, eval mode): weights copied, the two LSTM biases summed."""
    _check(embedding, lstm, linear, vocab)
    hid = lstm.hidden_size
    config = ModelConfig(
        vocab_size=vocab, embed_size=embedding.embedding_dim, hidden_size=hid, num_layers=lstm.num_layers
    )
    model = CharLSTM(config)
    state: dict[str, torch.Tensor] = {
        "embed.weight": embedding.weight,
        "head.weight": linear.weight,
        "head.bias": linear.bias if linear.bias is not None else torch.zeros(vocab),
    }
    for k in range(lstm.num_layers):
        params = dict(lstm.named_parameters())
        bias = torch.zeros(4 * hid)
        if lstm.bias:
            bias = params[f"bias_ih_l{k}"] + params[f"bias_hh_l{k}"]
        state[f"layers.{k}.weight_x"] = params[f"weight_ih_l{k}"]
        state[f"layers.{k}.weight_h"] = params[f"weight_hh_l{k}"]
        state[f"layers.{k}.bias"] = bias
        state[f"layers.{k}.peep"] = torch.zeros(0, hid)
    with torch.no_grad():
        model.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()})
    return model.eval()


def export_plain_lm(
    embedding: nn.Embedding,
    lstm: nn.LSTM,
    linear: nn.Linear,
    vocabulary: str | Sequence[str],
    out: Path,
    *,
    name: str = "plain-lstm",
    version: str = "1",
    corpus: str = "",
) -> ModelMetadata:
    """Write `embedding -> lstm -> linear` as a conforming ONNX file at `out`; return its metadata.

    `vocabulary[i]` is the character of token id i (its order is kept, not sorted). The LSTM may be batch-first or
    not (only its weights are read); dropout between layers is a training-time thing and is not exported."""
    chars = list(vocabulary)
    try:
        tokenizer = CharTokenizer(chars)
    except ValueError as exc:
        raise PlainModelError(f"vocabulary: {exc}") from None
    model = to_char_lstm(embedding, lstm, linear, tokenizer.vocab_size)
    return export_model(model, tokenizer, Path(out), name=name, version=version, corpus=corpus)
