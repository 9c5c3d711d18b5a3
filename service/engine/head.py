"""The model's output layer on its own: next-token logits from a stored hidden state.

A session stores h and C after its last token, not the logits that followed it. Generation that continues a
session without a new prompt needs those logits for its first token: they are the output layer applied to the top
layer's h. This runs that layer -- the graph's final MatMul and Add, with the file's own weights -- as a tiny ONNX
Runtime graph on the provider the model runs on, so its logits are bit for bit those the full graph gave after the
session's last token (tests/service/engine/test_head.py checks it on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.engine.ort import CPU, CUDA, ModelLoadError, OnnxRuntime, session_options

LOGITS = "logits"


def _head_graph(path: Path, fingerprint: str) -> onnx.ModelProto:
    """The model's last two nodes, `logits = MatMul(y, W) + b`, as a graph from y (B, T, H) to logits (B, T, V)."""
    proto = onnx.load(str(path))
    found = next((p.value for p in proto.metadata_props if p.key == "fingerprint"), None)
    if found != fingerprint:
        raise ModelLoadError(f"{path} now holds model {found}, not the served {fingerprint}")
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    add = producers.get(LOGITS)
    matmul = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    if (
        add is None
        or matmul is None
        or matmul.op_type != "MatMul"
        or add.input[1] not in inits
        or matmul.input[1] not in inits
    ):
        raise ModelLoadError(
            f"{path}: the logits are not MatMul + Add of weights, so the output layer cannot be run on a stored state"
        )
    weight, bias = inits[matmul.input[1]], inits[add.input[1]]
    hidden, vocab = weight.dims
    nodes = [helper.make_node("MatMul", ["y", weight.name], ["z"]), helper.make_node("Add", ["z", bias.name], [LOGITS])]
    head = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "seq", vocab])],
        initializer=[weight, bias],
    )
    model = helper.make_model(head, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return model


class Head:
    """`logits(h)`: the served model's next-token logits for top-layer hidden states h (B, H)."""

    def __init__(self, path: Path, runtime: OnnxRuntime, options: ort.SessionOptions) -> None:
        providers = [CUDA, CPU] if runtime.provider == "cuda" else [CPU]
        graph = _head_graph(path, runtime.metadata.fingerprint)
        self._session = ort.InferenceSession(graph.SerializeToString(), sess_options=options, providers=providers)

    @classmethod
    def load(cls, path: Path, runtime: OnnxRuntime, intra_op_threads: int = 1) -> Head:
        return cls(path, runtime, session_options(intra_op_threads, 1, "all", False))

    def logits(self, h: np.ndarray) -> np.ndarray:
        """h (B, H) float32 -> (B, V) float32."""
        y = np.ascontiguousarray(h, dtype=np.float32)[:, None, :]  # (B, 1, H): the shape the full graph runs
        out: np.ndarray = self._session.run(None, {"y": y})[0][:, 0]
        return out
