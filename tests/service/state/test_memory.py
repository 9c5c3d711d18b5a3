"""What only the in-memory store does: a bounded memory of gone ids, memory per session close to the raw state, and
no half-made session on a refused create. The behaviour both backends share (compare-and-set, TTL, capacity
eviction, fork, ...) is checked on both in test_store_contract.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.errors import SessionExpired, SessionNotFound, StateMismatch
from service.state.memory import MemoryStateStore

L, H = 2, 4


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_remembered_ids_are_bounded() -> None:
    clock = Clock()
    store = MemoryStateStore(L, H, 8, clock=clock, remember_gone=2)
    ids = [(await store.create(ttl_s=1)).session_id for _ in range(3)]
    clock.now += 2
    await store.sweep_expired()
    errors = [(await store.load_many([i])).records[0] for i in ids]
    assert [type(e) for e in errors] == [SessionNotFound, SessionExpired, SessionExpired]


# Run in a fresh interpreter: in the test process, heap freed by earlier tests is reused without raising RSS.
_RSS_PROBE = """
import asyncio, gc, sys
import numpy as np, psutil
from service.state.memory import MemoryStateStore

async def main(layers, hidden, n):
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    store = MemoryStateStore(layers, hidden, n, evict_idle_after_s=0)
    h = np.random.default_rng(0).standard_normal((layers, hidden)).astype(np.float32)
    for _ in range(n):
        await store.create(ttl_s=600, h=h, c=h)
    gc.collect()
    print((proc.memory_info().rss - before) / n, store.nbytes / n)

asyncio.run(main(*map(int, sys.argv[1:])))
"""


def test_memory_per_session_is_close_to_the_raw_state() -> None:
    """A bundled-size state (2 layers x 512 hidden) costs its 8 KiB plus a little bookkeeping, measured as RSS."""
    layers, hidden, n = 2, 512, 4000
    raw = layers * 2 * hidden * 4  # h and C, float32
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(layers), str(hidden), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    per_session, array_bytes = float(out[0]), float(out[1])
    # Every byte of every slot was written, so the arrays are resident; allow 15% for dict, ids and pages.
    assert raw <= per_session < raw * 1.15, per_session
    assert array_bytes < raw * 1.02


async def test_a_position_out_of_range_leaves_no_half_made_session() -> None:
    store = MemoryStateStore(L, H, 2)
    with pytest.raises(StateMismatch, match="out of range"):
        await store.create(ttl_s=10, position=2**63)
    assert await store.count() == 0
    await store.create(ttl_s=10)
    await store.create(ttl_s=10)  # both slots are still there
    assert await store.count() == 2
