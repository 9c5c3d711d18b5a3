"""The ONNX Runtime wrapper: provider choice, session options, the model contract, and clear load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from model.reference import ReferenceLSTM
from service.engine.ort import CUDA, ModelLoadError, OnnxRuntime, resolve_providers, session_options


def test_provider_resolution() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    if CUDA in ort.get_available_providers():
        assert resolve_providers("auto")[0] == CUDA
    else:
        assert resolve_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
            resolve_providers("cuda")


def test_session_options_are_applied() -> None:
    opts = session_options(2, 1, "basic", allow_spinning=False)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("peephole", [False, True])
def test_runs_the_exported_graph_like_the_reference(
    tiny_model_path: Path, tiny_peephole_model_path: Path, peephole: bool
) -> None:
    path = tiny_peephole_model_path if peephole else tiny_model_path
    rt = OnnxRuntime(path, "cpu", graph_optimization="all")
    assert rt.provider == "cpu" and rt.metadata.config.peephole is peephole
    rng = np.random.default_rng(1)
    ids = rng.integers(0, rt.vocab_size, (3, 5))  # (B, T)
    h = rng.standard_normal((rt.layers, 3, rt.hidden)).astype(np.float32)  # (L, B, H)
    c = rng.standard_normal((rt.layers, 3, rt.hidden)).astype(np.float32)
    runs = rt.runs
    logits, hn, cn = rt.run(ids, h, c)
    assert rt.runs == runs + 1
    ref_logits, ref_h, ref_c, _ = ReferenceLSTM.from_onnx(path).run(ids, h, c)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(hn, ref_h, atol=1e-5)
    np.testing.assert_allclose(cn, ref_c, atol=1e-5)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRuntime(bad, "cpu")


def test_a_model_without_metadata_or_contract_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, plain)
    with pytest.raises(ModelLoadError, match="metadata"):
        OnnxRuntime(plain, "cpu")
    # The right metadata on the wrong graph: the input/output contract is checked too.
    real = onnx.load(str(tiny_model_path))
    helper.set_model_props(proto, {p.key: p.value for p in real.metadata_props})
    onnx.save(proto, plain)
    with pytest.raises(ModelLoadError, match="inputs"):
        OnnxRuntime(plain, "cpu")
