"""The served graph with its next-token distribution added: softmax and top-k of the last position, in the graph.

A predict answers the k most likely next characters. Done in Python, that is a softmax and a sort on the engine
thread right after each ONNX Runtime run, when the interpreter's code is out of the caches: the post-processing of
one predict took 42-45 us in the server, against 12 us for its top-k warm, and top-k of 64 rows takes about
250 us. Added to the graph, ONNX Runtime does it in its run for 12 us (one row) and 43 us (64 rows); the server's
post-processing of one predict is then 14.5 us. Measured on the bundled int8 model, one intra-op thread.

The nodes appended after `logits` (B, T, V):
- Gather the last position: (B, V);
- Cast to float64 and Softmax: the probabilities in float64, as `topk.softmax` computes them;
- TopK with k from the `top_k` input (1,): sorted, largest first, and equal values in index order, which is
  `topk.top_k`'s order (probability descending, then id ascending).

So `next_probs` (B, k) float64 and `next_ids` (B, k) int64 are `top_k`'s answer, within a few units in the last
place of NumPy's probabilities (tests/service/engine/test_next_token.py). The model file is not changed: the
runtime builds this graph in memory beside the model as exported, and runs it only for batches that answer a
predict (service/engine/ort.py), so generation and the raw model figures run the graph as exported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.onnx_meta import OUTPUT_NAMES

TOP_K = "top_k"  # the input: (1,) int64, how many to return, 1 <= k <= V
PROBS, IDS = "next_probs", "next_ids"  # the outputs: (B, k) float64 and (B, k) int64
_PREFIX = "next_token_"  # names of the added nodes and tensors, apart from anything the exporter wrote


def with_next_token(path: Path) -> bytes:
    """The model at `path`, serialized, with the next-token nodes and their input and outputs added."""
    proto = onnx.load(str(path))
    graph = proto.graph
    logits = OUTPUT_NAMES[0]  # (B, T, V)
    last, wide, probs = (_PREFIX + n for n in ("last", "wide", "probs"))
    position = _PREFIX + "position"
    graph.initializer.append(numpy_helper.from_array(np.array(-1, dtype=np.int64), position))
    graph.input.append(helper.make_tensor_value_info(TOP_K, TensorProto.INT64, [1]))
    graph.node.extend(
        [
            helper.make_node("Gather", [logits, position], [last], axis=1, name=_PREFIX + "gather"),  # (B, V)
            helper.make_node("Cast", [last], [wide], to=TensorProto.DOUBLE, name=_PREFIX + "cast"),
            helper.make_node("Softmax", [wide], [probs], axis=-1, name=_PREFIX + "softmax"),
            helper.make_node("TopK", [probs, TOP_K], [PROBS, IDS], axis=-1, largest=1, sorted=1, name=_PREFIX + "topk"),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info(PROBS, TensorProto.DOUBLE, ["batch", TOP_K]),
            helper.make_tensor_value_info(IDS, TensorProto.INT64, ["batch", TOP_K]),
        ]
    )
    serialized: bytes = proto.SerializeToString()
    return serialized
