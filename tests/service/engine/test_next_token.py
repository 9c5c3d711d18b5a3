"""The next-token graph (softmax and top-k added to the served graph) gives `top_k`'s answer: the same ids in the
same order, probabilities within a few units in the last place of NumPy's float64; and the model's own outputs are
those of the graph as exported."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model.quantize import quantize_model
from service.app import Serving
from service.engine import ort as ort_module
from service.engine.ort import OnnxRuntime
from service.engine.steps import SampleNext
from service.engine.topk import TokenProb, top_k
from tests.service.conftest import SettingsFactory

RNG = np.random.default_rng(11)
RTOL = 1e-12  # float64 softmax in ONNX Runtime against NumPy's: the same sums in another order


@pytest.fixture(scope="module")
def int8_tiny(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_model(tiny_model_path, tmp_path_factory.mktemp("int8") / "tiny.int8.onnx").path


def assert_is_top_k(top: list[TokenProb], logits: np.ndarray, k: int, runtime: OnnxRuntime) -> None:
    want = top_k(logits, k, runtime.metadata.tokenizer)
    assert [(t.id, t.token) for t in top] == [(t.id, t.token) for t in want]
    np.testing.assert_allclose([t.prob for t in top], [t.prob for t in want], rtol=RTOL)


@pytest.mark.parametrize("fixture", ["tiny_model_path", "tiny_peephole_model_path", "int8_tiny"])
@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (3, 1), (4, 7)])
def test_run_top_is_run_plus_top_k(request: pytest.FixtureRequest, fixture: str, batch: int, steps: int) -> None:
    runtime = OnnxRuntime(request.getfixturevalue(fixture), "cpu")
    assert runtime.has_next_token
    ids = RNG.integers(0, runtime.vocab_size, (batch, steps))
    h0 = RNG.standard_normal((runtime.layers, batch, runtime.hidden)).astype(np.float32)
    c0 = RNG.standard_normal((runtime.layers, batch, runtime.hidden)).astype(np.float32)
    logits, hn, cn = runtime.run(ids, h0, c0)
    for k in (1, 5, runtime.vocab_size):
        t_logits, t_hn, t_cn, probs, top_ids = runtime.run_top(ids, h0, c0, k)
        np.testing.assert_array_equal(t_logits, logits)  # the model's outputs are the exported graph's, exactly
        np.testing.assert_array_equal(t_hn, hn)
        np.testing.assert_array_equal(t_cn, cn)
        assert probs.shape == top_ids.shape == (batch, k) and probs.dtype == np.float64
        for b in range(batch):
            want = top_k(logits[b, -1], k, runtime.metadata.tokenizer)
            assert top_ids[b].tolist() == [t.id for t in want]
            np.testing.assert_allclose(probs[b], [t.prob for t in want], rtol=RTOL)


def test_equal_probabilities_keep_id_order(tiny_model_path: Path, tmp_path: Path) -> None:
    """Ties go to the lower id, as `top_k` orders them: an output layer of zero weights and a bias of repeated
    values gives logits that tie exactly."""
    proto = onnx.load(str(tiny_model_path))
    inits = {t.name: t for t in proto.graph.initializer}
    add = next(n for n in proto.graph.node if n.output[0] == "logits")
    matmul = next(n for n in proto.graph.node if n.output[0] == add.input[0])
    weight = numpy_helper.to_array(inits[matmul.input[1]])
    bias = (np.arange(weight.shape[1]) % 3).astype(np.float32)  # (V,): 0, 1, 2, 0, 1, 2, ...
    inits[matmul.input[1]].CopyFrom(numpy_helper.from_array(np.zeros_like(weight), matmul.input[1]))
    inits[add.input[1]].CopyFrom(numpy_helper.from_array(bias, add.input[1]))
    path = tmp_path / "ties.onnx"
    onnx.save(proto, str(path))
    runtime = OnnxRuntime(path, "cpu")
    ids = RNG.integers(0, runtime.vocab_size, (2, 3))
    zeros = np.zeros((runtime.layers, 2, runtime.hidden), dtype=np.float32)
    logits, _, _, probs, top_ids = runtime.run_top(ids, zeros, zeros, runtime.vocab_size)
    np.testing.assert_array_equal(logits[:, -1], np.broadcast_to(bias, (2, len(bias))))
    twos, ones = np.flatnonzero(bias == 2).tolist(), np.flatnonzero(bias == 1).tolist()
    assert top_ids[0, : len(twos) + len(ones)].tolist() == twos + ones
    assert len(set(probs[0, : len(twos)].tolist())) == 1  # they do tie
    for b in range(2):
        want = top_k(logits[b, -1], runtime.vocab_size, runtime.metadata.tokenizer)
        assert top_ids[b].tolist() == [t.id for t in want]


def test_without_the_graph_top_k_runs_in_python(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not OnnxRuntime(tiny_model_path, "cpu", next_token=False).has_next_token

    def unusual(path: Path) -> bytes:
        raise ValueError("no logits to add to")

    monkeypatch.setattr(ort_module, "with_next_token", unusual)
    with caplog.at_level(logging.WARNING, logger="service.engine.ort"):
        runtime = OnnxRuntime(tiny_model_path, "cpu")
    assert not runtime.has_next_token
    assert "top-k runs in Python" in caplog.text
    with pytest.raises(AssertionError, match="next-token graph"):
        zeros = np.zeros((runtime.layers, 1, runtime.hidden), dtype=np.float32)
        runtime.run_top(np.zeros((1, 1), dtype=np.int64), zeros, zeros, 1)


@pytest.mark.parametrize("graph", [True, False])
async def test_a_mixed_batch_answers_every_asking_row(make_settings: SettingsFactory, graph: bool) -> None:
    """One batch of single-token steps: predicts with different k beside generation steps that ask for none. Each
    predict's top is `top_k` of its own logits, whether the graph or Python computed it."""
    serving = Serving(make_settings(next_token_graph=graph))
    await serving.start()
    try:
        engine = serving.engine
        runtime = serving.runtime
        assert runtime.has_next_token is graph
        draw = SampleNext(temperature=1.0, top_k=0, top_p=1.0, seed=5, index=0)
        ks = [1, 3, 0, 7, 0, runtime.vocab_size + 10]  # 0: a generation step; k beyond the vocabulary: all of it
        runs = runtime.runs
        results = await asyncio.gather(
            *(
                engine.step(np.array([i + 2], dtype=np.int64), top_k=k, sample_next=None if k else draw)
                for i, k in enumerate(ks)
            )
        )
        assert runtime.runs == runs + 1  # one batch
        for k, result in zip(ks, results, strict=True):
            if k:
                assert result.top is not None and len(result.top) == min(k, runtime.vocab_size)
                assert_is_top_k(result.top, result.logits, k, runtime)
            else:
                assert result.top is None and result.token is not None
    finally:
        await serving.stop()
