"""Property tests of sampling-parameter validation and of `sample` at the extremes: any value a client can send
(NaN, infinities, huge and negative numbers, huge integers, other numeric types, non-numbers) is either refused
with InvalidSamplingParams or accepted, and an accepted one always samples valid token ids (no NaN, no overflow,
no crash)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.engine.sampling import (
    MAX_SEED,
    InvalidSamplingParams,
    SamplingBatch,
    descending_order,
    sample,
    validate_params,
)

PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# Floats of every kind: NaN, +-inf, +-0, subnormals, the largest finite values.
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
EDGE_FLOATS = st.sampled_from(
    [0.0, -0.0, 5e-324, 1e-300, 1.0, 1.0 + 2**-52, 1 - 2**-53, 1.7976931348623157e308, math.inf, -math.inf, math.nan]
)
# Beyond float64, and beyond what Python will even print (4300 digits): the error message must still be built.
HUGE_INTS = st.integers(-(10**400), 10**400) | st.sampled_from([10**5000, -(10**5000)])
NUMBERS = (
    ANY_FLOAT
    | EDGE_FLOATS
    | HUGE_INTS
    | st.integers(-3, 80)
    | st.builds(Fraction, st.integers(-(10**400), 10**400), st.integers(1, 10**400))
    | ANY_FLOAT.map(np.float64)
    | st.floats(width=32).map(np.float32)
    | st.integers(-(2**63), 2**63 - 1).map(np.int64)
)
NOT_NUMBERS = st.sampled_from(["1.0", None, True, False, [1.0], {"t": 1}, b"1", 1j, object()])
PARAM = NUMBERS | NOT_NUMBERS


def is_real(value: object) -> bool:
    return isinstance(value, int | float | Fraction | np.floating | np.integer) and not isinstance(value, bool)


def expected_valid(temperature: Any, top_k: Any, top_p: Any, vocab: int, seed: Any) -> bool:
    """The documented rules, applied to the value as the arrays will hold it (float64 / int64 / uint64)."""
    if not (
        is_real(temperature) and is_real(top_p) and isinstance(top_k, int | np.integer) and not isinstance(top_k, bool)
    ):
        return False
    if seed is not None and not (
        isinstance(seed, int | np.integer) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED
    ):
        return False
    try:
        t, p = float(temperature), float(top_p)
    except OverflowError:
        return False
    return bool(math.isfinite(t) and t >= 0 and 0 <= top_k <= vocab and 0 < p <= 1)


@PROPERTIES
@given(temperature=PARAM, top_k=PARAM, top_p=PARAM, seed=st.none() | HUGE_INTS | PARAM, vocab=st.integers(1, 100))
@example(temperature=10**400, top_k=0, top_p=1.0, seed=None, vocab=5)  # float() overflows
@example(temperature=1.0, top_k=10**5000, top_p=1.0, seed=None, vocab=5)  # too long to print in the message
@example(temperature=1.0, top_k=0, top_p=Fraction(1, 10**400), seed=None, vocab=5)  # positive, but 0.0 as float
def test_validation_accepts_exactly_the_usable_values(
    temperature: Any, top_k: Any, top_p: Any, seed: Any, vocab: int
) -> None:
    valid = expected_valid(temperature, top_k, top_p, vocab, seed)
    if not valid:
        with pytest.raises(InvalidSamplingParams):
            validate_params(temperature, top_k, top_p, vocab, seed=seed)
        return
    validate_params(temperature, top_k, top_p, vocab, seed=seed)


@st.composite
def accepted_rows(draw: st.DrawFn) -> tuple[np.ndarray, SamplingBatch]:
    """Logits over the whole float32 range, and rows of parameters drawn from everything validation accepts."""
    rows, vocab = draw(st.integers(1, 6)), draw(st.integers(1, 80))
    logits = draw(
        hnp.arrays(
            np.float32,
            (rows, vocab),
            elements=st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 1.0, -1.0]),
        )
    )
    temps: list[Any] = []  # floats, ints and Fractions: whatever validation accepts
    ps: list[Any] = []
    ks: list[int] = []
    seeds: list[int] = []
    steps: list[int] = []
    for _ in range(rows):
        temperature: Any = draw(
            st.floats(0, 1.7976931348623157e308)
            | EDGE_FLOATS
            | st.integers(0, 10**300)
            | st.builds(Fraction, st.integers(0, 10**400), st.integers(1, 10**400))
        )
        top_k = draw(st.integers(0, vocab))
        top_p: Any = draw(
            st.floats(5e-324, 1.0) | EDGE_FLOATS | st.builds(Fraction, st.integers(1, 10), st.integers(10, 10**400))
        )
        seed = draw(st.integers(0, MAX_SEED))
        try:
            validate_params(temperature, top_k, top_p, vocab, seed=seed)
        except InvalidSamplingParams:
            continue
        temps.append(temperature)
        ks.append(top_k)
        ps.append(top_p)
        seeds.append(seed)
        steps.append(draw(st.integers(0, 2**63 - 2)))
    if not temps:  # every drawn row was refused: fall back to one plain row
        temps, ks, ps, seeds, steps = [1.0], [0], [1.0], [0], [0]
    return logits[: len(temps)], SamplingBatch.from_rows(temps, ks, ps, seeds, steps)


@PROPERTIES
@given(accepted_rows())
def test_accepted_values_always_sample_a_token_of_the_top_k_and_nucleus(case: tuple[np.ndarray, SamplingBatch]) -> None:
    logits, params = case
    with np.errstate(invalid="raise"):  # a NaN made anywhere (inf - inf, 0 * inf, 0 / 0) fails the test
        ids = sample(logits, params)
    vocab = logits.shape[1]
    assert ids.dtype == np.int64 and ids.shape == (len(params),)
    assert ((ids >= 0) & (ids < vocab)).all()
    for row, token in enumerate(ids.tolist()):
        k = int(params.top_k[row]) or vocab
        rank = int(np.sum(logits[row] > logits[row, token]))  # how many tokens are strictly more likely
        assert rank < k, "a token outside the top k was sampled"
        if params.temperature[row] == 0 or params.top_p[row] <= 2**-60:
            assert logits[row, token] == logits[row].max()  # greedy, or a nucleus of the top token only


@PROPERTIES
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(1, 80)),
        elements=st.floats(width=32, allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf]),
    )
)
def test_the_integer_key_order_is_the_stable_float64_order(logits: np.ndarray) -> None:
    """`sample` orders a batch's float32 logits by integer keys; it must be exactly the stable sort of their float64
    casts that `sample_row` uses (ties, -0.0 against 0.0 and infinities included), or a stream would draw other
    tokens in a batch than alone."""
    expected = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")
    assert descending_order(logits).tolist() == expected.tolist()
