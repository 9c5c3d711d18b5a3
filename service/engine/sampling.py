"""Next-token sampling for a whole batch of generation streams at once, plus stop-string matching.

Continuous batching advances many streams together, one token each per model step, so everything here works
on (batch, vocab) arrays with per-row parameters and no Python loop over rows.

Reproducibility: a row's random draw is a pure function of its (seed, step) — a counter-based hash, not a
stateful generator — so a stream samples the same tokens whichever other streams share its batch, in whichever
row order, on whichever replica.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_SEED = 2**64 - 1

# SplitMix64 constants (Steele, Lea & Flood 2014): the golden-ratio increment and the two finaliser multipliers.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class InvalidSamplingParams(ValueError):
    """Sampling parameters a generation request cannot use; the message names the parameter and the rule."""


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Per-row sampling parameters of one batch; every field is a (batch,) array.

    temperature: 0 means greedy (argmax). top_k: 0 means off. top_p: 1 means off. step: the row's token index
    within its generation, so together with seed it picks the row's random draw.
    """

    temperature: np.ndarray  # (batch,) float64, >= 0
    top_k: np.ndarray  # (batch,) int64, 0 <= k <= vocab
    top_p: np.ndarray  # (batch,) float64 in (0, 1]
    seed: np.ndarray  # (batch,) uint64
    step: np.ndarray  # (batch,) int64, >= 0

    @classmethod
    def from_rows(
        cls,
        temperature: Sequence[float],
        top_k: Sequence[int],
        top_p: Sequence[float],
        seed: Sequence[int],
        step: Sequence[int],
    ) -> SamplingBatch:
        """Stack per-stream values (already validated) into the arrays `sample` takes."""
        return cls(
            temperature=np.asarray(temperature, dtype=np.float64),
            top_k=np.asarray(top_k, dtype=np.int64),
            top_p=np.asarray(top_p, dtype=np.float64),
            # Python ints up to 2**64 - 1 convert exactly to uint64 (an int64 detour would overflow).
            seed=np.array([int(s) for s in seed], dtype=np.uint64),
            step=np.asarray(step, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.temperature.shape[0])

    def advanced(self) -> SamplingBatch:
        """The same rows' parameters for their next token: every step one further on."""
        return SamplingBatch(self.temperature, self.top_k, self.top_p, self.seed, self.step + 1)


def _show(value: object) -> str:
    """A short repr for an error message: a client's value may be an integer of thousands of digits, which
    Python refuses to print (ValueError), or a long string."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too large to print"
    return text if len(text) <= 40 else text[:37] + "..."


def _real(value: object, name: str) -> float:
    """The value as the float64 the sampling arrays will hold; refused if it is not a real number or if it does
    not fit (an integer or fraction beyond float64 raises OverflowError in float())."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidSamplingParams(f"{name} must be a number, got {_show(value)}")
    try:
        return float(value)
    except (OverflowError, ValueError):
        raise InvalidSamplingParams(f"{name} must be a finite number, got {_show(value)}") from None


def validate_params(temperature: float, top_k: int, top_p: float, vocab_size: int, seed: int | None = None) -> None:
    """Raise InvalidSamplingParams unless the values are usable for a model with `vocab_size` tokens.

    Temperature and top_p are judged as the float64 that `SamplingBatch` stores, so that a value accepted here
    is exactly the value sampled with (a positive top_p that rounds to 0 would cut every token).
    """
    t = _real(temperature, "temperature")
    if not math.isfinite(t) or t < 0:
        raise InvalidSamplingParams(f"temperature must be a finite number >= 0 (0 = greedy), got {_show(temperature)}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise InvalidSamplingParams(f"top_k must be an integer, got {_show(top_k)}")
    if not 0 <= top_k <= vocab_size:
        raise InvalidSamplingParams(
            f"top_k must be between 0 (off) and the vocabulary size {vocab_size}, got {_show(top_k)}"
        )
    p = _real(top_p, "top_p")
    if not (0 < p <= 1):  # also rejects NaN, which compares false
        raise InvalidSamplingParams(f"top_p must be in (0, 1] (1 = off), got {_show(top_p)}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED
    ):
        raise InvalidSamplingParams(f"seed must be an integer in [0, 2**64 - 1], got {_show(seed)}")


def _splitmix64_finalize(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on (batch,) uint64: a bijection that scrambles every bit."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def counter_uniform(seed: np.ndarray, step: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per row, a pure function of (seed, step): (batch,) uint64, (batch,) int64 -> float64.

    The seed is hashed into a stream key first so that nearby seeds give unrelated streams; the draw is then the
    step-th output of a SplitMix64 generator started at that key. 53 bits fill the float64 mantissa exactly.
    """
    seed = np.asarray(seed, dtype=np.uint64)
    step = np.asarray(step, dtype=np.int64).astype(np.uint64)
    if seed.shape[0] <= FEW_ROWS:  # a dozen NumPy calls cost more than Python integers for a few rows
        draws = [_uniform_one(int(s), int(t)) for s, t in zip(seed.tolist(), step.tolist(), strict=True)]
        return np.array(draws, dtype=np.float64)
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap modulo 2**64
        key = _splitmix64_finalize(seed + _GAMMA)
        z = _splitmix64_finalize(key + (step + np.uint64(1)) * _GAMMA)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


FEW_ROWS = 8  # up to this many rows, per-row work on Python values beats the batch arrays
_MASK = (1 << 64) - 1


def _finalize_one(z: int) -> int:
    """`_splitmix64_finalize` on one Python integer, modulo 2**64: bit for bit the same."""
    z = ((z ^ (z >> 30)) * int(_MIX1)) & _MASK
    z = ((z ^ (z >> 27)) * int(_MIX2)) & _MASK
    return z ^ (z >> 31)


def _uniform_one(seed: int, step: int) -> float:
    key = _finalize_one((seed + int(_GAMMA)) & _MASK)
    z = _finalize_one((key + ((step + 1) * int(_GAMMA))) & _MASK)
    return (z >> 11) * (1.0 / (1 << 53))


def sample(logits: np.ndarray, params: SamplingBatch) -> np.ndarray:
    """Pick one token per row: (batch, vocab) logits -> (batch,) int64 token ids.

    Per row: temperature 0 is argmax (ties to the lower id). Otherwise the logits are scaled by 1/temperature,
    cut to the top_k most likely tokens, then to the nucleus — the smallest most-likely-first set whose
    probability (renormalised after top-k) reaches top_p, always at least the top token — and one token is
    drawn by inverse CDF with the row's (seed, step) uniform. Ties in rank go to the lower id, as for greedy.
    """
    x = np.asarray(logits, dtype=np.float64)  # (batch, vocab)
    batch, vocab = x.shape
    if len(params) != batch:
        raise ValueError(f"{len(params)} rows of sampling parameters for {batch} rows of logits")
    if batch <= FEW_ROWS:  # one stream, or a few: per-row 1-D work is cheaper than the batch's 2-D calls
        rows = zip(
            params.temperature.tolist(),
            params.top_k.tolist(),
            params.top_p.tolist(),
            params.seed.tolist(),
            params.step.tolist(),
            strict=True,
        )
        return np.array([sample_row(x[i], *row) for i, row in enumerate(rows)], dtype=np.int64)
    greedy_ids: np.ndarray = np.argmax(x, axis=1).astype(np.int64)  # (batch,)
    sampling_rows = params.temperature > 0  # (batch,)
    if not sampling_rows.any():  # an all-greedy batch needs no sort
        return greedy_ids

    # One stable sort serves both cuts: scaling by a positive temperature keeps the order, and stability sends
    # ties to the lower id, matching argmax. A full sort of 76 columns is cheaper than argpartition plus sorting.
    exact32 = isinstance(logits, np.ndarray) and logits.dtype == np.float32 and not np.isnan(logits).any()
    order = descending_order(logits) if exact32 else np.argsort(-x, axis=1, kind="stable")  # (batch, vocab)
    sorted_x = np.take_along_axis(x, order, axis=1)  # (batch, vocab) descending
    temperature = np.where(sampling_rows, params.temperature, 1.0)  # (batch,); greedy rows unused
    # Shift by the row max before dividing: the values are <= 0, so a tiny temperature gives -inf (prob 0),
    # never inf - inf = NaN.
    with np.errstate(over="ignore", divide="ignore"):
        scaled = (sorted_x - sorted_x[:, :1]) / temperature[:, None]  # (batch, vocab), column 0 is 0
    weights = np.exp(scaled)  # (batch, vocab) unnormalised probabilities
    if (params.top_k > 0).any() or (params.top_p < 1.0).any():  # the cuts; skipped when no row asks (exact:
        weights = _cut(weights, params.top_k, params.top_p, vocab)  # every mask would be all ones)

    cdf = np.cumsum(weights, axis=1)  # (batch, vocab), flat across cut tokens
    target = counter_uniform(params.seed, params.step) * cdf[:, -1]  # (batch,) in [0, total)
    # The first rank whose cdf exceeds the target: it always has positive weight, since the cdf rises there.
    picked_rank = np.minimum((cdf <= target[:, None]).sum(axis=1), vocab - 1)  # (batch,)
    sampled_ids = np.take_along_axis(order, picked_rank[:, None], axis=1)[:, 0]  # (batch,)

    ids: np.ndarray = np.where(sampling_rows, sampled_ids, greedy_ids).astype(np.int64)
    return ids


def descending_order(logits: np.ndarray) -> np.ndarray:
    """`np.argsort(-logits, axis=1, kind="stable")` for (batch, vocab) float32 logits without NaN: the ids most
    likely first, ties in id order; the same order as for their float64 casts, which `sample` samples from.

    A stable sort of floats is about three times the cost of an unstable sort of integers, so each logit becomes
    one unique uint64: its float32 bits mapped to an unsigned integer that sorts like the value, inverted for
    descending order, above its id. Sorting those keys needs no stability, and the low 32 bits are the order.
    """
    bits = (logits + np.float32(0.0)).view(np.int32)  # + 0.0 makes -0.0 into 0.0: they compare equal
    # Negative floats sort in reverse as integers: flip all their bits; positive ones: set the sign bit.
    ascending = np.where(bits < 0, ~bits, bits | np.int32(-(2**31))).view(np.uint32)  # (batch, vocab)
    keys = (~ascending).astype(np.uint64) << np.uint64(32)  # descending value in the high half
    keys |= np.arange(logits.shape[1], dtype=np.uint64)  # the id below it: equal values go in id order
    keys.sort(axis=1)
    order: np.ndarray = (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
    return order


def sample_row(x: np.ndarray, temperature: float, top_k: int, top_p: float, seed: int, step: int) -> int:
    """`sample` for one row of logits (vocab,): the same operations in the same order, so the same token."""
    if temperature <= 0:
        return int(np.argmax(x))
    order = np.argsort(-x, kind="stable")  # (vocab,) ids, most likely first
    sorted_x = x[order]
    with np.errstate(over="ignore", divide="ignore"):
        scaled = (sorted_x - sorted_x[0]) / temperature  # (vocab,), element 0 is 0
    weights = np.exp(scaled)
    if top_k > 0 or top_p < 1.0:
        weights = _cut(weights[None], np.array([top_k]), np.array([top_p]), len(x))[0]
    cdf = np.cumsum(weights)  # (vocab,)
    target = _uniform_one(seed, step) * float(cdf[-1])
    picked = min(int(np.count_nonzero(cdf <= target)), len(x) - 1)
    return int(order[picked])


def _cut(weights: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, vocab: int) -> np.ndarray:
    """Zero the weights (batch, vocab), most likely first, outside each row's top-k and then its nucleus."""
    rank = np.arange(vocab)[None, :]  # (1, vocab)
    k = np.where(top_k > 0, top_k, vocab)  # (batch,)
    weights = weights * (rank < k[:, None])  # (batch, vocab) after top-k
    probs = weights / weights.sum(axis=1, keepdims=True)  # column 0 has weight 1, so the sum is >= 1
    mass_before = np.cumsum(probs, axis=1) - probs  # (batch, vocab) probability of strictly better tokens
    # A token is in the nucleus while the tokens ranked above it have not yet reached top_p; rank 0 always is
    # (mass 0 < top_p). top_p = 1 keeps everything exactly, whatever rounding the cumsum did.
    in_nucleus = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    cut: np.ndarray = weights * in_nucleus
    return cut


class StopMatcher:
    """Tells when generated text ends with one of the stop strings; fed the output a character at a time.

    Only the last max(len(stop)) characters are kept, so each step costs O(stops * longest stop) however long
    the generation runs.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("stops must be a sequence of strings, not a single string")
        for stop in stops:
            if not isinstance(stop, str) or not stop:
                raise InvalidSamplingParams(f"stop strings must be non-empty strings, got {stop!r}")
        # Deduplicate, longest first, so the reported match is the longest stop ending here.
        self.stops: tuple[str, ...] = tuple(sorted(set(stops), key=lambda s: (-len(s), s)))
        self._window = max((len(s) for s in self.stops), default=0)
        self._tail = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str | None:
        """Append decoded output (usually one character); return the stop string the text now ends with, if any.

        With several characters, each is checked in turn and the first match wins. Once a stop has matched,
        later calls keep returning it without looking further (generation should have ended).
        """
        if self.matched is not None or not self._window:
            return self.matched
        for char in text:
            self._tail = (self._tail + char)[-self._window :]
            for stop in self.stops:
                if self._tail.endswith(stop):
                    self.matched = stop
                    return stop
        return None

    def reset(self) -> None:
        """Forget everything fed so far."""
        self._tail = ""
        self.matched = None
