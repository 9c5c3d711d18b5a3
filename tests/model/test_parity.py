"""PyTorch against ONNX Runtime against the NumPy gate equations, and chunked state against one pass."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.export import export_model
from model.reference import ReferenceLSTM
from tests.factories import make_tiny_lstm

SEQ = 220  # at least 200 characters
BATCH = 3


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "peephole"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model, tok = make_tiny_lstm(peephole=request.param, hidden=24, layers=2, seed=3)
    path = tmp_path_factory.mktemp("parity") / "m.onnx"
    export_model(model, tok, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, path, sess


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 76, size=(BATCH, SEQ), dtype=np.int64)
    h0 = rng.normal(size=(2, BATCH, 24)).astype(np.float32)
    c0 = rng.normal(size=(2, BATCH, 24)).astype(np.float32)
    return ids, h0, c0


def _ort(sess: ort.InferenceSession, ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {"input_ids": ids, "h0": h, "c0": c})  # type: ignore[no-any-return]


def test_graph_uses_one_standard_lstm_operator_per_layer(exported) -> None:  # type: ignore[no-untyped-def]
    model, path, _ = exported
    proto = onnx.load(str(path))
    lstm_nodes = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == model.config.num_layers
    has_p = [len(n.input) > 7 and bool(n.input[7]) for n in lstm_nodes]
    assert has_p == [model.config.peephole] * model.config.num_layers
    assert [i.name for i in proto.graph.input] == ["input_ids", "h0", "c0"]
    assert [o.name for o in proto.graph.output] == ["logits", "hn", "cn"]


def test_onnx_runtime_equals_pytorch_at_every_step(exported) -> None:  # type: ignore[no-untyped-def]
    model, _, sess = exported
    ids, h0, c0 = _inputs(0)
    with torch.no_grad():
        t_logits, t_h, t_c = model(torch.from_numpy(ids), torch.from_numpy(h0), torch.from_numpy(c0))
    logits, hn, cn = _ort(sess, ids, h0, c0)
    np.testing.assert_allclose(logits, t_logits.numpy(), atol=1e-4, rtol=1e-5)  # every position (rtol: logits reach 5)
    np.testing.assert_allclose(hn, t_h.numpy(), atol=1e-4)
    np.testing.assert_allclose(cn, t_c.numpy(), atol=1e-4, rtol=1e-5)
    # The state after every step, one character per call, in both runtimes.
    th, tc, h, c = torch.from_numpy(h0), torch.from_numpy(c0), h0, c0
    for t in range(SEQ):
        with torch.no_grad():
            _, th, tc = model(torch.from_numpy(ids[:, t : t + 1]), th, tc)
        _, h, c = _ort(sess, ids[:, t : t + 1], h, c)
        np.testing.assert_allclose(h, th.numpy(), atol=1e-4, rtol=1e-5, err_msg=f"h at step {t}")
        np.testing.assert_allclose(c, tc.numpy(), atol=1e-4, rtol=1e-5, err_msg=f"C at step {t}")


def test_numpy_gate_equations_reproduce_onnx_runtime(exported) -> None:  # type: ignore[no-untyped-def]
    _, path, sess = exported
    ids, h0, c0 = _inputs(1)
    ref = ReferenceLSTM.from_onnx(path)
    r_logits, r_h, r_c, traces = ref.run(ids, h0, c0)
    logits, hn, cn = _ort(sess, ids, h0, c0)
    np.testing.assert_allclose(logits, r_logits, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(hn, r_h, atol=1e-4)
    np.testing.assert_allclose(cn, r_c, atol=1e-4, rtol=1e-5)  # float32 against float64 over 220 steps
    top = traces[-1]
    assert top.f.shape == (BATCH, SEQ, 24)
    assert (top.f >= 0).all() and (top.f <= 1).all() and (np.abs(top.c_tilde) <= 1).all()
    np.testing.assert_allclose(top.h, top.o * np.tanh(top.c))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_state_equals_one_pass(exported, seed: int) -> None:  # type: ignore[no-untyped-def]
    _, _, sess = exported
    ids, h0, c0 = _inputs(10 + seed)
    whole_logits, whole_h, whole_c = _ort(sess, ids, h0, c0)
    rng = np.random.default_rng(seed)
    h, c, start, pieces = h0, c0, 0, []
    while start < SEQ:
        size = int(rng.integers(1, 40))
        logits, h, c = _ort(sess, ids[:, start : start + size], h, c)
        pieces.append(logits)
        start += size
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole_logits, atol=1e-5)
    np.testing.assert_allclose(h, whole_h, atol=1e-5)
    np.testing.assert_allclose(c, whole_c, atol=1e-5)


def test_metadata_travels_inside_the_file(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path, sess = exported
    props = sess.get_modelmeta().custom_metadata_map
    assert {"name", "version", "vocab", "config", "fingerprint", "corpus"} <= set(props)
    assert props["fingerprint"].startswith("sha256:")
    ref = ReferenceLSTM.from_onnx(path)
    assert ref.metadata.fingerprint == props["fingerprint"]
