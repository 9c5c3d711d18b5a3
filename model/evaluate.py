"""Validation loss of an exported model, measured through ONNX Runtime (what is served), not PyTorch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.onnx_meta import ModelMetadata


@dataclass(frozen=True)
class Evaluation:
    nats_per_char: float
    characters: int
    seconds: float

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)


def load_session(path: Path, threads: int = 0) -> tuple[ort.InferenceSession, ModelMetadata]:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def evaluate_onnx(path: Path, text: str, batch: int = 32, window: int = 256) -> Evaluation:
    """Mean next-character cross-entropy over `text`, cut into `batch` streams, state carried across windows."""
    started = time.perf_counter()
    sess, meta = load_session(path)
    ids = meta.tokenizer.encode(text)
    n = len(ids) // batch
    data = ids[: n * batch].reshape(batch, n)  # (B, n)
    shape = (meta.config.num_layers, batch, meta.config.hidden_size)
    h, c = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    total, count = 0.0, 0
    for start in range(0, n - 1, window):
        x = data[:, start : min(start + window, n - 1)]
        y = data[:, start + 1 : start + 1 + x.shape[1]]
        logits, h, c = sess.run(None, {"input_ids": x, "h0": h, "c0": c})
        lp = log_softmax(logits.astype(np.float64))
        total -= float(np.take_along_axis(lp, y[..., None], axis=-1).sum())
        count += y.size
    return Evaluation(total / count, count, time.perf_counter() - started)
