"""top_k_rows (one softmax, sort and gather for a batch) answers what top_k answers for each row alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.tokenizer import CharTokenizer
from service.engine.topk import top_k, top_k_rows

TOKENIZER = CharTokenizer(chars=tuple(chr(ord("a") + i) for i in range(12)))
VOCAB = len(TOKENIZER.chars)


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    n = draw(st.integers(1, 6))
    # Few distinct values, so ties (which go to the lower id) are common.
    values = st.sampled_from([-3.0, 0.0, 0.5, 2.0, 9.0]) | st.floats(-20, 20, width=32)
    logits = np.array(draw(st.lists(st.lists(values, min_size=VOCAB, max_size=VOCAB), min_size=n, max_size=n)))
    ks = draw(st.lists(st.integers(1, VOCAB + 3), min_size=n, max_size=n))
    return logits.astype(np.float32), ks


@settings(max_examples=200, deadline=None)
@given(batches())
def test_rows_at_once_equal_each_row_alone(batch: tuple[np.ndarray, list[int]]) -> None:
    logits, ks = batch
    together = top_k_rows(logits, ks, TOKENIZER)
    alone = [top_k(row, k, TOKENIZER) for row, k in zip(logits, ks, strict=True)]
    assert [[(t.id, t.token) for t in r] for r in together] == [[(t.id, t.token) for t in r] for r in alone]
    for r_together, r_alone in zip(together, alone, strict=True):
        np.testing.assert_allclose([t.prob for t in r_together], [t.prob for t in r_alone], rtol=1e-12)
