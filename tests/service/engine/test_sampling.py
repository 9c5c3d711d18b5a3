"""Batched sampling: greedy, top-k/top-p cuts, reproducibility across batch compositions, the draw's distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.engine.sampling import (
    InvalidSamplingParams,
    SamplingBatch,
    StopMatcher,
    counter_uniform,
    sample,
    validate_params,
)

VOCAB = 76
MASK64 = 2**64 - 1


def batch_of(
    n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, step: int = 0
) -> SamplingBatch:
    return SamplingBatch.from_rows([temperature] * n, [top_k] * n, [top_p] * n, [seed] * n, [step] * n)


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, vocab)) * scale).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x.astype(np.float64) - x.max())
    out: np.ndarray = z / z.sum()
    return out


# --- the counter-based uniform --------------------------------------------------------------------------------


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_uniform(seed: int, step: int) -> float:
    """The documented algorithm in plain Python integers: replays must not change across versions."""
    gamma = 0x9E3779B97F4A7C15
    key = _mix((seed + gamma) & MASK64)
    return (_mix((key + (step + 1) * gamma) & MASK64) >> 11) / 2.0**53


@pytest.mark.parametrize("copies", [1, 3])  # 6 rows take the few-rows path, 18 the NumPy one
def test_counter_uniform_matches_reference_splitmix64(copies: int) -> None:
    seeds = [0, 1, 2, 12345, 2**63, MASK64] * copies
    steps = [0, 1, 7, 10**6, 2**40, 3] * copies
    got = counter_uniform(np.array(seeds, dtype=np.uint64), np.array(steps, dtype=np.int64))
    assert got.dtype == np.float64
    assert got.tolist() == [reference_uniform(s, t) for s, t in zip(seeds, steps, strict=True)]


def test_counter_uniform_is_in_unit_interval_and_spread() -> None:
    u = counter_uniform(np.arange(20_000, dtype=np.uint64), np.zeros(20_000, dtype=np.int64))
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.01
    # Ten equal bins hold about a tenth each; over steps of one seed as well as over seeds.
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 1800
    v = counter_uniform(np.full(20_000, 7, dtype=np.uint64), np.arange(20_000, dtype=np.int64))
    assert np.histogram(v, bins=10, range=(0, 1))[0].min() > 1800
    assert len(np.unique(v)) == 20_000


# --- greedy and the degenerate cuts ---------------------------------------------------------------------------


def test_temperature_zero_is_argmax() -> None:
    logits = random_logits(32)
    ids = sample(logits, batch_of(32, temperature=0.0, seed=99))
    assert ids.dtype == np.int64 and ids.shape == (32,)
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))


def test_greedy_ties_go_to_the_lower_id_in_every_mode() -> None:
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, [3, 6]] = 5.0
    for params in (batch_of(1, temperature=0.0), batch_of(1, top_k=1, seed=4), batch_of(1, top_p=1e-9, seed=4)):
        assert sample(logits, params).tolist() == [3]


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_greedy(temperature: float) -> None:
    logits = random_logits(64, seed=1)
    params = SamplingBatch.from_rows([temperature] * 64, [1] * 64, [1.0] * 64, range(64), range(64))
    np.testing.assert_array_equal(sample(logits, params), logits.argmax(axis=1))


def test_tiny_top_p_is_greedy() -> None:
    logits = random_logits(64, seed=2)
    params = SamplingBatch.from_rows([1.5] * 64, [0] * 64, [1e-9] * 64, range(64), [3] * 64)
    np.testing.assert_array_equal(sample(logits, params), logits.argmax(axis=1))


def test_tiny_temperature_is_greedy_without_nans() -> None:
    logits = random_logits(16, seed=3, scale=50.0)
    params = batch_of(16, temperature=1e-30, seed=5)
    np.testing.assert_array_equal(sample(logits, params), logits.argmax(axis=1))


def test_huge_temperature_is_near_uniform() -> None:
    logits = np.tile(np.linspace(-5, 5, 8, dtype=np.float32), (8000, 1))
    params = SamplingBatch.from_rows([1e6] * 8000, [0] * 8000, [1.0] * 8000, range(8000), [0] * 8000)
    counts = np.bincount(sample(logits, params), minlength=8)
    assert counts.min() > 850 and counts.max() < 1150


def test_rows_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="rows"):
        sample(random_logits(3), batch_of(2))


# --- reproducibility ------------------------------------------------------------------------------------------


def test_a_row_samples_the_same_whatever_shares_its_batch() -> None:
    rng = np.random.default_rng(11)
    n = 24
    logits = random_logits(n, seed=11)
    temps = rng.uniform(0.2, 2.0, n).tolist()
    ks = rng.integers(0, 20, n).tolist()
    ps = rng.uniform(0.3, 1.0, n).tolist()
    seeds = [int(s) for s in rng.integers(0, 2**63, n)] + []
    seeds[0] = MASK64  # the top of the seed range takes the same path
    steps = rng.integers(0, 1000, n).tolist()
    full = sample(logits, SamplingBatch.from_rows(temps, ks, ps, seeds, steps))

    alone = [
        int(sample(logits[i : i + 1], SamplingBatch.from_rows([temps[i]], [ks[i]], [ps[i]], [seeds[i]], [steps[i]]))[0])
        for i in range(n)
    ]
    assert full.tolist() == alone

    perm = rng.permutation(n)
    shuffled = sample(
        logits[perm],
        SamplingBatch.from_rows(
            [temps[i] for i in perm],
            [ks[i] for i in perm],
            [ps[i] for i in perm],
            [seeds[i] for i in perm],
            [steps[i] for i in perm],
        ),
    )
    assert shuffled.tolist() == full[perm].tolist()


def test_seed_and_step_both_change_the_draw() -> None:
    logits = np.zeros((400, VOCAB), dtype=np.float32)  # uniform: every draw is visible in the output
    by_seed = sample(logits, SamplingBatch.from_rows([1.0] * 400, [0] * 400, [1.0] * 400, range(400), [0] * 400))
    by_step = sample(logits, SamplingBatch.from_rows([1.0] * 400, [0] * 400, [1.0] * 400, [5] * 400, range(400)))
    assert len(set(by_seed.tolist())) > 60
    assert len(set(by_step.tolist())) > 60
    again = sample(logits, SamplingBatch.from_rows([1.0] * 400, [0] * 400, [1.0] * 400, [5] * 400, range(400)))
    assert again.tolist() == by_step.tolist()


# --- the distribution drawn -----------------------------------------------------------------------------------


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token outside the support"
    return float((((counts - expected) ** 2)[support] / expected[support]).sum())


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.9, 6, 0.7)]
)
@pytest.mark.parametrize("over", ["seeds", "steps"])
def test_empirical_distribution_matches_the_cut_softmax(
    temperature: float, top_k: int, top_p: float, over: str
) -> None:
    vocab, n = 10, 40_000
    row = np.array([2.0, 1.5, 1.2, 1.0, 0.4, 0.0, -0.5, -1.0, 0.9, -3.0], dtype=np.float32)
    probs = softmax(row / temperature)
    order = np.argsort(-row, kind="stable")
    keep = np.zeros(vocab, dtype=bool)
    keep[order[: top_k or vocab]] = True
    probs = np.where(keep, probs, 0.0) / probs[keep].sum()
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = order[(mass_before < top_p) | (top_p >= 1)]
    cut = np.zeros(vocab)
    cut[nucleus] = probs[nucleus]
    cut /= cut.sum()

    seeds, steps = (range(n), [0] * n) if over == "seeds" else ([42] * n, range(n))
    params = SamplingBatch.from_rows([temperature] * n, [top_k] * n, [top_p] * n, seeds, steps)
    counts = np.bincount(sample(np.tile(row, (n, 1)), params), minlength=vocab)
    dof = int((cut > 0).sum()) - 1
    # The seeds are fixed, so this cannot flake; the bound is the 99.99th percentile of chi-square for dof <= 9.
    assert chi_square(counts, cut) < max(dof, 1) + 8 * math.sqrt(2 * max(dof, 1)) + 10


# --- the cuts never leak (property) ---------------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, SamplingBatch]:
    rows = draw(st.integers(1, 6))
    vocab = draw(st.integers(1, 12))
    logits = draw(
        hnp.arrays(np.float32, (rows, vocab), elements=st.floats(-30, 30, width=32) | st.sampled_from([0.0, 1.0]))
    )
    temps = draw(st.lists(st.sampled_from([0.0, 1e-3]) | st.floats(0.05, 10), min_size=rows, max_size=rows))
    ks = draw(st.lists(st.integers(0, vocab), min_size=rows, max_size=rows))
    ps = draw(st.lists(st.floats(1e-6, 1.0) | st.just(1.0), min_size=rows, max_size=rows))
    seeds = draw(st.lists(st.integers(0, MASK64), min_size=rows, max_size=rows))
    steps = draw(st.lists(st.integers(0, 2**62), min_size=rows, max_size=rows))
    return logits, SamplingBatch.from_rows(temps, ks, ps, seeds, steps)


def allowed_ids(row: np.ndarray, temperature: float, top_k: int, top_p: float) -> set[int]:
    """A per-row reference of the cuts, with slack at the nucleus edge so rounding cannot make it flaky."""
    if temperature == 0:
        return {int(np.argmax(row))}
    order = np.argsort(-row.astype(np.float64), kind="stable")
    kept = order[: top_k or len(row)]
    z = (row[kept].astype(np.float64) - row[kept].max()) / temperature
    probs = np.exp(z) / np.exp(z).sum()
    mass_before = np.cumsum(probs) - probs
    return {int(i) for i, m in zip(kept, mass_before, strict=True) if m < top_p + 1e-9 or top_p >= 1}


@settings(max_examples=150, deadline=None)
@given(batches())
def test_samples_stay_inside_the_top_k_and_nucleus_sets(case: tuple[np.ndarray, SamplingBatch]) -> None:
    logits, params = case
    ids = sample(logits, params)
    assert ids.shape == (len(params),) and ids.dtype == np.int64
    for i, token in enumerate(ids.tolist()):
        t, k, p = float(params.temperature[i]), int(params.top_k[i]), float(params.top_p[i])
        assert token in allowed_ids(logits[i], t, k, p)


@settings(max_examples=200, deadline=None)
@given(batches())
def test_a_few_rows_sample_as_in_a_full_batch(case: tuple[np.ndarray, SamplingBatch]) -> None:
    """A batch of up to 8 rows takes a per-row path (cheaper for one stream); it must draw exactly the tokens
    the vectorised path draws for the same rows inside a batch of 9+ (rows copied to fill it)."""
    logits, params = case
    n = len(params)
    reps = -(-9 // n)  # enough copies of the rows for a batch of at least 9
    big = SamplingBatch(*(np.tile(getattr(params, f), reps) for f in ("temperature", "top_k", "top_p", "seed", "step")))
    assert len(big) > 8
    assert sample(logits, params).tolist() == sample(np.tile(logits, (reps, 1)), big)[:n].tolist()


# --- validation -----------------------------------------------------------------------------------------------


def test_valid_params_pass() -> None:
    validate_params(0.0, 0, 1.0, VOCAB)
    validate_params(1, VOCAB, 0.5, VOCAB, seed=0)
    validate_params(2.5, 1, 1e-9, VOCAB, seed=MASK64)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "seed", "needle"),
    [
        (math.nan, 0, 1.0, None, "temperature"),
        (math.inf, 0, 1.0, None, "temperature"),
        (-0.1, 0, 1.0, None, "temperature"),
        ("1.0", 0, 1.0, None, "temperature"),
        (True, 0, 1.0, None, "temperature"),
        (1.0, -1, 1.0, None, "top_k"),
        (1.0, VOCAB + 1, 1.0, None, "top_k"),
        (1.0, 2.0, 1.0, None, "top_k"),
        (1.0, 0, 0.0, None, "top_p"),
        (1.0, 0, 1.0001, None, "top_p"),
        (1.0, 0, -0.5, None, "top_p"),
        (1.0, 0, math.nan, None, "top_p"),
        (1.0, 0, 1.0, -1, "seed"),
        (1.0, 0, 1.0, 2**64, "seed"),
        (1.0, 0, 1.0, 1.5, "seed"),
    ],
)
def test_invalid_params_are_rejected(
    temperature: object, top_k: object, top_p: object, seed: object, needle: str
) -> None:
    with pytest.raises(InvalidSamplingParams, match=needle):
        validate_params(temperature, top_k, top_p, VOCAB, seed=seed)  # type: ignore[arg-type]
    assert issubclass(InvalidSamplingParams, ValueError)


# --- stop strings ---------------------------------------------------------------------------------------------


def feed_all(matcher: StopMatcher, text: str) -> tuple[int, str] | None:
    for i, char in enumerate(text):
        hit = matcher.feed(char)
        if hit is not None:
            return i, hit
    return None


@pytest.mark.parametrize(
    ("stops", "text", "expected"),
    [
        (["\n\n"], "To be,\nor not\n\nto be", (14, "\n\n")),
        (["END"], "the ENend", None),
        (["END"], "the ENEND", (8, "END")),
        (["a"], "bba", (2, "a")),
        (["xyz", "yz"], "axyz", (3, "xyz")),  # two stops end here: the longest is reported
        (["abcab"], "abcabcab", (4, "abcab")),
        (["ab", "abab"], "aab", (2, "ab")),
        ([], "anything at all", None),
        (["ü!"], "grüß ü!", (6, "ü!")),
    ],
)
def test_stop_matcher(stops: list[str], text: str, expected: tuple[int, str] | None) -> None:
    assert feed_all(StopMatcher(stops), text) == expected


def test_stop_matcher_keeps_only_a_tail_and_latches() -> None:
    matcher = StopMatcher(["STOP", "xx"])
    for _ in range(10_000):
        assert matcher.feed("a") is None
    assert len(matcher._tail) == 4
    assert matcher.feed("STO") is None
    assert matcher.feed("P") == "STOP"
    assert matcher.feed("b") == "STOP" and matcher.matched == "STOP"
    matcher.reset()
    assert matcher.matched is None and matcher.feed("x") is None and matcher.feed("x") == "xx"


def test_stop_matcher_multi_character_feed_finds_a_stop_inside() -> None:
    assert StopMatcher(["ab"]).feed("xaby") == "ab"


def test_stop_matcher_rejects_empty_or_bare_strings() -> None:
    with pytest.raises(InvalidSamplingParams):
        StopMatcher([""])
    with pytest.raises(TypeError):
        StopMatcher("stop")
