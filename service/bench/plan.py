"""How big a run is: the full benchmark, or the short smoke mode (same code paths, tiny counts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    short: bool
    concurrencies: tuple[int, ...]  # sessions of scenario 2 (predict, wrk)
    stream_concurrencies: tuple[int, ...]  # streams of scenario 3 (SSE, curl --parallel)
    compare_at: int  # where the baselines are compared and the "at 64" targets read (64 in full runs)
    limit_batches: tuple[int, ...]
    limit_budget_s: float  # per batch size
    warmup_s: float  # per load point, before its measuring window opens (wrk: a separate run, when >= 1 s)
    duration_s: float  # the measuring window of one load point (wrk: whole seconds, at least 1)
    max_requests: int  # per simulated user and load point: the loops are bounded whatever the timing
    stream_tokens: int  # max_tokens of each streamed generation
    prefix_chars: int  # sessions and re-sent texts start from this much text
    memory_sessions: tuple[int, ...]
    positions: tuple[int, ...]  # scenario 7, stateful
    resend_lengths: tuple[int, ...]  # scenario 7, stateless (100,000 is extrapolated: one request takes seconds)
    step_rounds: int
    profile_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    short=False,
    concurrencies=(1, 16, 64, 256),
    stream_concurrencies=(1, 16, 64),
    compare_at=64,
    limit_batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    limit_budget_s=1.0,
    warmup_s=1.0,
    duration_s=6.0,
    max_requests=100_000,
    stream_tokens=100,
    prefix_chars=200,
    memory_sessions=(10_000, 100_000),
    positions=(10, 1_000, 100_000),
    resend_lengths=(10, 1_000, 10_000),
    step_rounds=200,
    profile_s=5.0,
)

SHORT = Plan(
    short=True,
    concurrencies=(1, 16),
    stream_concurrencies=(1, 16),
    compare_at=16,
    limit_batches=(1, 16),
    limit_budget_s=0.1,
    warmup_s=0.1,
    duration_s=0.25,  # wrk still measures whole seconds (at least 1); curl and the Python client 0.25 s
    max_requests=2_000,
    stream_tokens=8,
    prefix_chars=20,
    memory_sessions=(1_000, 10_000),
    positions=(10, 1_000),
    resend_lengths=(10, 1_000),
    step_rounds=10,
    profile_s=1.0,
)
