"""The notes' gate equations in NumPy, reading the weights from the ONNX file (no torch, no ONNX Runtime).

A test oracle for the served model, and the source of gate activations for inspection. It reads the ONNX LSTM
operators' W, R, B and P tensors, so it checks the exported graph itself, gate order included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from model.onnx_meta import ModelMetadata

# Block order inside the ONNX LSTM operator's W, R and B (the spec's `iofc`) and P (`iof`).
ONNX_BLOCKS = {"i": 0, "o": 1, "f": 2, "c": 3}
ONNX_PEEPS = {"i": 0, "o": 1, "f": 2}


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


@dataclass(frozen=True)
class LayerWeights:
    """One layer's weights, split per gate: W_x[g] (H, in), W_h[g] (H, H), b[g] (H,), p[g] (H,) or None."""

    w_x: dict[str, np.ndarray]
    w_h: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    p: dict[str, np.ndarray] | None

    @classmethod
    def from_onnx(cls, w: np.ndarray, r: np.ndarray, b: np.ndarray, peep: np.ndarray | None) -> LayerWeights:
        """Split ONNX's stacked LSTM tensors per gate: W (4H, in), R (4H, H), B (8H,) = Wb + Rb, P (3H,) or None,
        in ONNX's gate order (ONNX_BLOCKS, ONNX_PEEPS)."""
        hid = r.shape[1]

        def block(a: np.ndarray, g: int) -> np.ndarray:
            return a[g * hid : (g + 1) * hid]

        return cls(
            w_x={g: block(w, k) for g, k in ONNX_BLOCKS.items()},
            w_h={g: block(r, k) for g, k in ONNX_BLOCKS.items()},
            b={g: block(b, k) + block(b[4 * hid :], k) for g, k in ONNX_BLOCKS.items()},  # Wb + Rb
            p=None if peep is None else {g: block(peep, k) for g, k in ONNX_PEEPS.items()},
        )


@dataclass(frozen=True)
class GateTrace:
    """Every gate of every step of one layer, each (batch, seq, hidden)."""

    f: np.ndarray
    i: np.ndarray
    c_tilde: np.ndarray
    o: np.ndarray
    c: np.ndarray
    h: np.ndarray


class ReferenceLSTM:
    """The stacked char LSTM of an exported ONNX file, computed gate by gate in float64."""

    def __init__(
        self,
        metadata: ModelMetadata,
        embedding: np.ndarray,
        layers: list[LayerWeights],
        head_w: np.ndarray,
        head_b: np.ndarray,
    ) -> None:
        self.metadata = metadata
        self.embedding = embedding  # (V, E)
        self.layers = layers
        self.head_w = head_w  # (H, V)
        self.head_b = head_b  # (V,)

    @classmethod
    def from_onnx(cls, path: Path) -> ReferenceLSTM:
        proto = onnx.load(str(path))
        meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
        inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
        layers = []
        for node in (n for n in proto.graph.node if n.op_type == "LSTM"):
            w, r, b = (inits[node.input[k]][0] for k in (1, 2, 3))  # (4H, in), (4H, H), (8H,)
            peep = inits[node.input[7]][0] if len(node.input) > 7 and node.input[7] else None  # (3H,)
            layers.append(LayerWeights.from_onnx(w, r, b, peep))
        if len(layers) != meta.config.num_layers:
            raise ValueError(f"found {len(layers)} LSTM operators, config says {meta.config.num_layers}")
        return cls(meta, inits["embedding"], layers, inits["head_w"], inits["head_b"])

    def run(
        self, input_ids: np.ndarray, h0: np.ndarray, c0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[GateTrace]]:
        """input_ids (B, T); h0, c0 (L, B, H) -> logits (B, T, V), hn, cn (L, B, H), one GateTrace per layer."""
        x = self.embedding[input_ids]  # (B, T, E): the one-hot vector times the embedding matrix
        hn, cn, traces = [], [], []
        for lw, h, c in zip(self.layers, h0.astype(np.float64), c0.astype(np.float64), strict=True):
            trace = self._layer(lw, x, h, c)
            traces.append(trace)
            x = trace.h
            hn.append(trace.h[:, -1])
            cn.append(trace.c[:, -1])
        logits = x @ self.head_w + self.head_b
        return logits, np.stack(hn), np.stack(cn), traces

    @staticmethod
    def _layer(lw: LayerWeights, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> GateTrace:
        """Run one layer over x (B, T, in) from h, c (B, H), recording every gate."""
        steps: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "i", "c_tilde", "o", "c", "h")}
        for t in range(x.shape[1]):
            x_t = x[:, t]

            def pre(g: str, x_t: np.ndarray = x_t, h: np.ndarray = h) -> np.ndarray:
                out: np.ndarray = x_t @ lw.w_x[g].T + h @ lw.w_h[g].T + lw.b[g]  # W_g [h_{t-1}, x_t] + b_g
                return out

            peep = lw.p
            f = sigmoid(pre("f") + (peep["f"] * c if peep else 0.0))  # forget gate
            i = sigmoid(pre("i") + (peep["i"] * c if peep else 0.0))  # input gate
            c_tilde = np.tanh(pre("c"))  # candidate
            c = f * c + i * c_tilde  # C_t = f * C_{t-1} + i * c~
            o = sigmoid(pre("o") + (peep["o"] * c if peep else 0.0))  # output gate sees C_t
            h = o * np.tanh(c)  # h_t = o * tanh(C_t)
            for k, v in (("f", f), ("i", i), ("c_tilde", c_tilde), ("o", o), ("c", c), ("h", h)):
                steps[k].append(v)
        stacked = {k: np.stack(v, axis=1) for k, v in steps.items()}  # each (B, T, H)
        return GateTrace(**stacked)
