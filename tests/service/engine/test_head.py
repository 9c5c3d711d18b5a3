"""The output layer on its own gives bit for bit the full graph's logits, so generation from a stored state equals
generation straight after the prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from service.engine.head import Head
from service.engine.ort import ModelLoadError, OnnxRuntime

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("fixture", ["tiny_model_path", "tiny_peephole_model_path"])
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_head_logits_are_the_full_graphs_bit_for_bit(request: pytest.FixtureRequest, fixture: str, batch: int) -> None:
    path: Path = request.getfixturevalue(fixture)
    runtime = OnnxRuntime(path, "cpu")
    head = Head.load(path, runtime)
    ids = RNG.integers(0, runtime.vocab_size, (batch, 5))
    h0 = RNG.standard_normal((runtime.layers, batch, runtime.hidden)).astype(np.float32)
    c0 = RNG.standard_normal((runtime.layers, batch, runtime.hidden)).astype(np.float32)
    logits, hn, _ = runtime.run(ids, h0, c0)
    np.testing.assert_array_equal(head.logits(hn[-1]), logits[:, -1])  # exact, not approximately
    np.testing.assert_array_equal(head.logits(hn[-1, :1]), logits[:1, -1])  # whatever the batch size


def test_head_refuses_a_file_that_changed(tiny_model_path: Path, tiny_peephole_model_path: Path) -> None:
    runtime = OnnxRuntime(tiny_model_path, "cpu")
    with pytest.raises(ModelLoadError, match="not the served"):
        Head.load(tiny_peephole_model_path, runtime)


def test_head_refuses_a_graph_without_matmul_add_logits(tiny_model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_model_path))
    add = next(n for n in proto.graph.node if n.output[0] == "logits")
    add.CopyFrom(helper.make_node("Sub", list(add.input), ["logits"]))
    path = tmp_path / "sub.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match="MatMul \\+ Add"):
        Head.load(path, OnnxRuntime(tiny_model_path, "cpu"))
