"""Property tests of state import: whatever a client puts in an exported state (garbage base64, NaN, infinities,
wrong shapes, another model's fingerprint, positions beyond what the stores hold), import_state either returns
exactly the floats that were sent, in arrays the store can hold, or raises InvalidInput / StateMismatch, the two
errors the API maps to 422."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.engine.state_io import MAX_POSITION, PortableState, export_state, import_state
from service.errors import InvalidInput, StateMismatch

PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True, database=None)
FINGERPRINT = "sha256:" + "ab" * 32
SHAPE = (2, 3)
SIZE = SHAPE[0] * SHAPE[1]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# h and C as they can arrive: the right number of float32 (any bit pattern, NaN and infinities included), the wrong
# number, random bytes, base64 with whitespace, padding or non-ASCII damage, or plain text.
FLOAT32S = hnp.arrays(np.dtype("<f4"), SIZE, elements=st.floats(width=32) | st.sampled_from([np.nan, np.inf]))
ANY_BITS = st.binary(min_size=4 * SIZE, max_size=4 * SIZE)
ARRAYS = (
    FLOAT32S.map(lambda a: b64(a.tobytes()))
    | ANY_BITS.map(b64)
    | st.binary(max_size=64).map(b64)
    | st.tuples(FLOAT32S, st.sampled_from([" ", "\n", "=", "==", "é", "\0", "-", "_"]), st.integers(0, 30)).map(
        lambda t: b64(t[0].tobytes())[: t[2]] + t[1] + b64(t[0].tobytes())[t[2] :]
    )
    | st.text(max_size=40)
)
POSITIONS = st.integers(-(2**70), 2**70) | st.sampled_from([0, MAX_POSITION, MAX_POSITION + 1, 2**63 - 1, 2**63])
SHAPES = (
    st.just(SHAPE)
    | st.tuples(st.integers(-(2**70), 2**70), st.integers(-3, 8))
    | st.sampled_from([(3, 2), (SIZE, 1), (1, SIZE), (2, 3, 1), (2,), ()])
)


@st.composite
def portable_states(draw: st.DrawFn) -> PortableState:
    fingerprint = draw(
        st.just(FINGERPRINT) | st.sampled_from(["", "sha256:" + "00" * 32, FINGERPRINT.upper()]) | st.text(max_size=10)
    )
    dtype = draw(st.just("float32") | st.sampled_from(["float64", "float16", "FLOAT32", "<f4", ""]))
    shape: Any = draw(SHAPES)
    return PortableState(fingerprint, draw(POSITIONS), shape, dtype, draw(ARRAYS), draw(ARRAYS))


def decoded(text: str) -> np.ndarray | None:
    """The reference reading of one array: strict base64 of exactly SIZE little-endian float32, else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return np.frombuffer(raw, "<f4").reshape(SHAPE) if len(raw) == 4 * SIZE else None


def acceptable(state: PortableState) -> bool:
    """The documented rules of an importable state, as a reference to check import_state against."""
    if (state.model_fingerprint, tuple(state.shape), state.dtype) != (FINGERPRINT, SHAPE, "float32"):
        return False
    if not 0 <= state.position <= MAX_POSITION:
        return False
    h, c = decoded(state.h), decoded(state.c)
    return h is not None and c is not None and bool(np.isfinite(h).all() and np.isfinite(c).all())


@PROPERTIES
@given(portable_states())
def test_any_state_is_imported_or_refused_with_the_modules_errors(state: PortableState) -> None:
    try:
        h, c = import_state(state, FINGERPRINT, SHAPE)
    except (InvalidInput, StateMismatch) as exc:
        assert not acceptable(state), exc.message
        assert exc.message
        if isinstance(exc, InvalidInput):
            assert exc.code == "invalid_state"
        return
    assert acceptable(state)
    for got, text in ((h, state.h), (c, state.c)):
        assert got.shape == SHAPE and got.dtype == np.float32 and got.flags.writeable
        np.testing.assert_array_equal(got, decoded(text))


@PROPERTIES
@given(st.sampled_from([FINGERPRINT + "0", "sha256:" + "cd" * 32, ""]), portable_states())
def test_another_models_state_is_a_mismatch_whatever_else_it_holds(other: str, state: PortableState) -> None:
    foreign = PortableState(other, state.position, state.shape, state.dtype, state.h, state.c)
    with pytest.raises(StateMismatch, match="exported from model"):
        import_state(foreign, FINGERPRINT, SHAPE)


FINITE = hnp.arrays(np.float32, SHAPE, elements=st.floats(width=32, allow_nan=False, allow_infinity=False))


@PROPERTIES
@given(FINITE, FINITE, st.integers(0, MAX_POSITION))
def test_every_finite_state_round_trips_bit_for_bit(h: np.ndarray, c: np.ndarray, position: int) -> None:
    exported = export_state(FINGERPRINT, position, h, c)
    assert exported.shape == SHAPE and exported.position == position
    h2, c2 = import_state(exported, FINGERPRINT, SHAPE)
    assert h2.tobytes() == h.astype("<f4").tobytes() and c2.tobytes() == c.astype("<f4").tobytes()  # -0.0 too
