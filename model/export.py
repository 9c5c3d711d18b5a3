"""Checkpoint -> ONNX: one standard `LSTM` operator per layer, metadata inside.

The graph (shapes with B = batch, T = sequence, L = layers, H = hidden, E = embedding, V = vocabulary):
    input_ids (B, T) int64 -> Gather(embedding) (B, T, E) -> Transpose (T, B, E)
    per layer l: LSTM(X, W, R, B, initial_h=h0[l], initial_c=c0[l], P) -> Y (T, 1, B, H), Y_h, Y_c (1, B, H)
    Y of the last layer -> (B, T, H) -> MatMul + bias -> logits (B, T, V); hn, cn = Concat(Y_h), Concat(Y_c)
ONNX's LSTM orders its gate blocks (i, o, f, c) and its peepholes (i, o, f); ours are (i, f, c, o) and
(i, f, o), so the blocks are reordered here. The operator's default activations (sigmoid, tanh, tanh) are the
notes' ones, and its single bias is ours with a zero recurrent bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.lstm import CharLSTM
from model.onnx_meta import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata, fingerprint
from model.tokenizer import CharTokenizer

OPSET = 17
ONNX_GATE_ORDER = (0, 3, 1, 2)  # our (i, f, c, o) blocks -> ONNX (i, o, f, c)
ONNX_PEEP_ORDER = (0, 2, 1)  # our (p_i, p_f, p_o) -> ONNX (p_i, p_o, p_f)


def reorder_blocks(w: np.ndarray, hidden: int, order: tuple[int, ...]) -> np.ndarray:
    """Reorder the gate blocks along axis 0 of a (k*H, ...) array."""
    return np.concatenate([w[g * hidden : (g + 1) * hidden] for g in order], axis=0)


def layer_initializers(layer_idx: int, sd: dict[str, np.ndarray], cfg: ModelConfig) -> list[TensorProto]:
    """W (1, 4H, in), R (1, 4H, H), B (1, 8H) and, with peepholes, P (1, 3H) for one layer, in ONNX order."""
    hid = cfg.hidden_size
    p = f"layers.{layer_idx}."
    w = reorder_blocks(sd[p + "weight_x"], hid, ONNX_GATE_ORDER)[None]
    r = reorder_blocks(sd[p + "weight_h"], hid, ONNX_GATE_ORDER)[None]
    b = reorder_blocks(sd[p + "bias"], hid, ONNX_GATE_ORDER)
    bias = np.concatenate([b, np.zeros_like(b)])[None]  # [Wb, Rb]: the recurrent bias is zero
    inits = [
        numpy_helper.from_array(a.astype(np.float32), f"l{layer_idx}_{n}") for n, a in (("W", w), ("R", r), ("B", bias))
    ]
    if cfg.peephole:
        peep = sd[p + "peep"][list(ONNX_PEEP_ORDER)].reshape(1, 3 * hid)
        inits.append(numpy_helper.from_array(peep.astype(np.float32), f"l{layer_idx}_P"))
    return inits


def build_graph(model: CharLSTM) -> onnx.GraphProto:
    cfg = model.config
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    inits: list[TensorProto] = [
        numpy_helper.from_array(sd["embed.weight"].astype(np.float32), "embedding"),  # (V, E)
        numpy_helper.from_array(sd["head.weight"].T.astype(np.float32).copy(), "head_w"),  # (H, V)
        numpy_helper.from_array(sd["head.bias"].astype(np.float32), "head_b"),  # (V,)
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"], axis=0),  # (B, T, E)
        helper.make_node("Transpose", ["emb"], ["x0"], perm=[1, 0, 2]),  # (T, B, E)
    ]
    x, hs, cs = "x0", [], []
    for i in range(cfg.num_layers):
        inits += layer_initializers(i, sd, cfg)
        inits += [
            numpy_helper.from_array(np.array([v], dtype=np.int64), f"l{i}_{n}")
            for n, v in (("start", i), ("end", i + 1))
        ]
        nodes += [
            helper.make_node("Slice", ["h0", f"l{i}_start", f"l{i}_end"], [f"l{i}_h0"]),  # (1, B, H)
            helper.make_node("Slice", ["c0", f"l{i}_start", f"l{i}_end"], [f"l{i}_c0"]),
            helper.make_node(
                "LSTM",
                [x, f"l{i}_W", f"l{i}_R", f"l{i}_B", "", f"l{i}_h0", f"l{i}_c0", f"l{i}_P" if cfg.peephole else ""],
                [f"l{i}_Y", f"l{i}_Yh", f"l{i}_Yc"],
                hidden_size=cfg.hidden_size,
                name=f"lstm_{i}",
            ),
            helper.make_node("Squeeze", [f"l{i}_Y", "axis1"], [f"x{i + 1}"]),  # (T, B, H)
        ]
        x = f"x{i + 1}"
        hs.append(f"l{i}_Yh")
        cs.append(f"l{i}_Yc")
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes += [
        helper.make_node("Concat", hs, ["hn"], axis=0),  # (L, B, H)
        helper.make_node("Concat", cs, ["cn"], axis=0),
        helper.make_node("Transpose", [x], ["y_bt"], perm=[1, 0, 2]),  # (B, T, H)
        helper.make_node("MatMul", ["y_bt", "head_w"], ["y_v"]),  # (B, T, V)
        helper.make_node("Add", ["y_v", "head_b"], ["logits"]),
    ]
    state = ["layers", "batch", cfg.hidden_size]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [cfg.num_layers, "batch", cfg.hidden_size]),
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, [cfg.num_layers, "batch", cfg.hidden_size]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [cfg.num_layers, "batch", cfg.hidden_size]),
        helper.make_tensor_value_info("cn", TensorProto.FLOAT, [cfg.num_layers, "batch", cfg.hidden_size]),
    ]
    del state
    assert tuple(i.name for i in inputs) == INPUT_NAMES and tuple(o.name for o in outputs) == OUTPUT_NAMES
    return helper.make_graph(nodes, "char_lstm", inputs, outputs, initializer=inits)


def export_model(
    model: CharLSTM,
    tokenizer: CharTokenizer,
    out: Path,
    name: str = "shakespeare-lstm",
    version: str = "1",
    val_loss: float | None = None,
    corpus: str = "",
    corpus_description: str = "",
) -> ModelMetadata:
    """Write `model` as ONNX to `out` with its metadata inside; return that metadata."""
    graph = build_graph(model)
    meta = ModelMetadata(
        name=name,
        version=version,
        config=model.config,
        tokenizer=tokenizer,
        fingerprint=fingerprint((t.name, numpy_helper.to_array(t).tobytes()) for t in graph.initializer),
        val_loss=val_loss,
        corpus=corpus,
        corpus_description=corpus_description,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstm-serve")
    proto.ir_version = 8
    helper.set_model_props(proto, meta.to_props())
    onnx.checker.check_model(proto, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    onnx.save(proto, tmp)
    tmp.replace(out)
    return meta


def export_checkpoint(checkpoint: Path, out: Path, **kwargs: Any) -> ModelMetadata:
    model, tokenizer, _ = load_checkpoint(checkpoint)
    return export_model(model, tokenizer, out, **kwargs)
