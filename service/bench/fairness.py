"""Fair scheduling: one-character session predicts while 4 clients send 8,192-character prompts, with chunked
prefill on (the product's default) and off (`--prefill-chunk-tokens 0`), measured next to each other.

Without chunking, a long prompt occupies the model for its whole length and every short step queued behind it
waits that long; with chunking, short steps run between the chunks. The figure is the short steps' p50 and p99.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from typing import Any

import httpx

from service.bench.context import Context

LONG_CLIENTS = 4
LONG_CHARS = 8_192
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.\n"


def _flood(url: str, stop: threading.Event, seed: int, sent: list[int]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            text = "".join(rng.choice(ALPHABET) for _ in range(LONG_CHARS))
            if client.post("/v1/predict", json={"text": text}).status_code == 200:
                sent.append(LONG_CHARS)


def measure(url: str, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Short predicts on one session, closed loop, for `seconds` while the long prompts flood the server."""
    stop = threading.Event()
    sent: list[int] = []
    floods = [threading.Thread(target=_flood, args=(url, stop, seed + i, sent)) for i in range(LONG_CLIENTS)]
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
        for t in floods:
            t.start()
        time.sleep(0.5)  # the long prompts are in flight
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
    stop.set()
    for t in floods:
        t.join()
    if not latencies:
        return {"status": "no short predict answered"}
    ordered = sorted(latencies)
    return {
        "short_requests": len(latencies),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "long_chars_per_s": sum(sent) / (seconds + 0.5),
    }


def scenario_fairness(ctx: Context) -> dict[str, Any]:
    seconds = 1.0 if ctx.plan.short else 10.0
    out: dict[str, Any] = {"long_clients": LONG_CLIENTS, "long_chars": LONG_CHARS, "seconds": seconds}
    for name in ("main", "unchunked"):
        if ctx.has(name):
            t = ctx.targets[name]
            out[name] = measure(f"http://{t.host}:{t.port}", seconds, ctx.seed)
    main, off = out.get("main", {}), out.get("unchunked", {})
    if "p99_ms" in main and "p99_ms" in off:
        out["p99_ratio_on_off"] = main["p99_ms"] / off["p99_ms"]
    return out
