"""Durable mode's cost: session predict (wrk) at 1 and 16 sessions and one SSE stream (curl), on the product
server as it ships ("main", durable off) and on the same flags with `--durable --snapshot-path <file>` (every
batch's state writes journaled, one write and one fsync per batch), measured next to each other per point.

The snapshot file lies in the bench's temporary directory, on the disk the machine gives it: the fsync's cost is
that disk's, so the figures are read as ratios of the two servers in the same run.
"""

from __future__ import annotations

from typing import Any

from service.bench.context import Context

PREDICT_SESSIONS = (1, 16)
STREAMS = 1
SERVERS = ("main", "durable")
FIGURES = ("throughput", "p50_ms", "p99_ms", "first_byte_ms", "inter_token_ms")


def _figures(point: dict[str, Any]) -> dict[str, float | None]:
    """Predict: requests/s and the requests' p50 and p99. A stream: tokens/s, its time to first byte and its mean
    gap between tokens (one stream gives one of each: curl sees the stream whole, not each token's latency)."""
    if point.get("kind") == "stream":
        first, gap = point.get("ttft_ms") or {}, point.get("itl_ms") or {}
        return {
            "throughput": point.get("throughput"),
            "first_byte_ms": first.get("p50"),
            "inter_token_ms": gap.get("p50"),
        }
    lat = point.get("latency_ms") or {}
    return {"throughput": point.get("throughput"), "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99")}


def _ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, float]:
    return {k: float(on[k]) / float(off[k]) for k in FIGURES if on.get(k) and off.get(k)}


def scenario_durable(ctx: Context) -> dict[str, Any]:
    """Per point: the figures of each server (`_figures`), the whole point beside them, and durable / off."""
    if not ctx.has("durable"):
        return {"status": "not run: the durable server was not started"}
    points: list[dict[str, Any]] = []
    for kind, c in [*(("predict", c) for c in PREDICT_SESSIONS), ("stream", STREAMS)]:
        row: dict[str, Any] = {"kind": kind, "concurrency": c}
        for name in SERVERS:
            if ctx.has(name):
                point = ctx.point(kind, name, c)
                row[name] = {**_figures(point), "point": point}
        if "main" in row and "durable" in row:
            row["ratio_durable_off"] = _ratios(row["durable"], row["main"])
        points.append(row)
    return {"points": points}
