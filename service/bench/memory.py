"""Scenario 6, memory per session: the in-memory store filled with N written sessions, in a fresh process.

`python -m service.bench.memory --model PATH --sessions N` prints one JSON object. A fresh process per N so that
no earlier allocation (of the bench or of another N) hides in the figure. The process loads the model as the
server does, so its RSS before the store is the fixed cost of a serving process (interpreter, NumPy, ONNX
Runtime, weights), and the growth is what the sessions cost. Each session's state is written with random
values through `save_many`, as a step would, so every page of it is really committed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from service.engine.ort import OnnxRuntime
from service.state.memory import MemoryStateStore

CHUNK = 1024


async def fill(store: MemoryStateStore, n: int, rng: np.random.Generator) -> None:
    for start in range(0, n, CHUNK):
        records = [await store.create(ttl_s=3600.0) for _ in range(min(CHUNK, n - start))]
        shape = (store.layers, len(records), store.hidden)  # (L, n, H)
        await store.save_many(
            [r.session_id for r in records],
            rng.random(shape, dtype=np.float32),
            rng.random(shape, dtype=np.float32),
            [1] * len(records),
            [r.version for r in records],
        )


def measure(model: Path, sessions: int) -> dict[str, Any]:
    proc = psutil.Process()
    rt = OnnxRuntime(model, "cpu", next_token=False)
    gc.collect()
    before = int(proc.memory_info().rss)
    t0 = time.perf_counter()
    store = MemoryStateStore(rt.layers, rt.hidden, sessions)
    asyncio.run(fill(store, sessions, np.random.default_rng(0)))
    gc.collect()
    after = int(proc.memory_info().rss)
    raw_per_session = rt.layers * 2 * rt.hidden * 4  # h and C, float32
    return {
        "sessions": sessions,
        "rss_before": before,
        "rss_after": after,
        "growth": after - before,
        "raw_state": sessions * raw_per_session,
        "raw_per_session": raw_per_session,
        "growth_per_session": (after - before) / sessions,
        "growth_over_raw": (after - before) / (sessions * raw_per_session),
        "store_array_bytes": store.nbytes,
        "fill_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--sessions", type=int, required=True)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.sessions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
