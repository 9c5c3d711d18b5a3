"""The issue's targets, each read from this run's results as a ratio of two figures measured in the same run.

A target whose figures are missing is reported as not evaluated (with why), never as met. Each target names the
load point a profile should be taken of when it is missed (`profile`: server, job kind, concurrency).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MB = 1_000_000


def _at(points: Sequence[dict[str, Any]], c: int) -> dict[str, Any] | None:
    return next((p for p in points if p.get("concurrency") == c and "throughput" in p), None)


def _limit_tps(results: dict[str, Any], batch: int) -> float | None:
    rows = results.get("limit", {}).get("batches", [])
    row = next((r for r in rows if r["batch"] == batch), None)
    return None if row is None else float(row["tokens_per_s"])


def _target(
    name: str,
    goal: str,
    value: float | None,
    bound: float,
    *,
    at_most: bool = False,
    detail: str = "",
    profile: tuple[str, str, int] | None = None,
    missing: str = "",
) -> dict[str, Any]:
    met = None if value is None else (value <= bound if at_most else value >= bound)
    return {
        "name": name,
        "goal": goal,
        "value": value,
        "bound": bound,
        "at_most": at_most,
        "met": met,
        "detail": detail if value is not None else missing or "not measured in this run",
        "profile": list(profile) if profile else None,
    }


def _stream_targets(r: dict[str, Any], c64: int) -> list[dict[str, Any]]:
    stream = r.get("stream", {})
    on, off = stream.get("main", []), stream.get("off", [])
    why = stream.get("status", "")
    out = []
    for c, share in ((c64, 0.30), (1, 0.40)):
        p = _at(on, c)
        lim = p["limit_adjacent"]["tokens_per_s"] if p and "limit_adjacent" in p else _limit_tps(r, c)
        value = p["tokens_per_s"] / lim if p and lim else None
        detail = (
            f"{p['tokens_per_s']:.0f} tokens/s against the raw {lim:.0f} at batch {c} (measured next to it)"
            if p and lim
            else ""
        )
        out.append(
            _target(
                f"stream_{c}_vs_limit",
                f"{c} stream(s): tokens/s >= {share:.0%} of raw ORT at batch {c}",
                value,
                share,
                detail=detail,
                profile=("main", "stream", c),
                missing=why,
            )
        )
    a, b = _at(on, c64), _at(off, c64)
    value = a["tokens_per_s"] / b["tokens_per_s"] if a and b and b["tokens_per_s"] else None
    detail = f"{a['tokens_per_s']:.0f} against {b['tokens_per_s']:.0f} tokens/s" if a and b else ""
    out.append(
        _target(
            "batching_speedup",
            f"batching on vs off at {c64} streams: >= 5x tokens/s",
            value,
            5.0,
            detail=detail,
            profile=("main", "stream", c64),
            missing=why,
        )
    )
    return out


def _predict_targets(r: dict[str, Any], c64: int) -> list[dict[str, Any]]:
    pred = r.get("predict", {})
    out = []
    for c in (1, c64):
        a, b = _at(pred.get("main", []), c), _at(pred.get("noop", []), c)
        value = a["latency_ms"]["p50"] / b["latency_ms"]["p50"] if a and b else None
        detail = (
            f"p50 {a['latency_ms']['p50']:.2f} ms against the no-op's {b['latency_ms']['p50']:.2f} ms"
            if a and b
            else ""
        )
        out.append(
            _target(
                f"predict_p50_vs_noop_{c}",
                f"predict p50 <= 2x the no-op route's at {c} session(s)",
                value,
                2.0,
                at_most=True,
                detail=detail,
                profile=("main", "predict", c),
            )
        )
    a, t = _at(pred.get("main", []), c64), _at(pred.get("torch", []), c64)
    tput = a["throughput"] / t["throughput"] if a and t else None
    p99 = a["latency_ms"]["p99"] / t["latency_ms"]["p99"] if a and t else None
    detail = (
        (
            f"{a['throughput']:.0f} against {t['throughput']:.0f} requests/s; p99 {a['latency_ms']['p99']:.1f} "
            f"against {t['latency_ms']['p99']:.1f} ms"
        )
        if a and t
        else ""
    )
    out.append(
        _target(
            "vs_torch_throughput",
            f"vs PyTorch eager at {c64} sessions: >= 3x throughput",
            tput,
            3.0,
            detail=detail,
            profile=("main", "predict", c64),
        )
    )
    out.append(
        _target(
            "vs_torch_p99",
            f"vs PyTorch eager at {c64} sessions: p99 <= 0.5x",
            p99,
            0.5,
            at_most=True,
            detail=detail,
            profile=("main", "predict", c64),
        )
    )
    return out


def _memory_target(r: dict[str, Any]) -> dict[str, Any]:
    mem = r.get("memory", {})
    points = mem.get("points", [])
    if not points or "fixed_bytes" not in mem:
        return _target(
            "memory",
            "RSS at the most sessions <= 1.5x raw state + a fixed overhead < 300 MB",
            None,
            1.0,
            at_most=True,
            missing=mem.get("status", ""),
        )
    big = points[-1]
    allowance = 1.5 * big["raw_state"] + 300 * MB
    detail = (
        f"{big['rss_after'] / MB:.0f} MB RSS at {big['sessions']:,} sessions (raw state "
        f"{big['raw_state'] / MB:.0f} MB): {mem['per_session_bytes']:.0f} B per session "
        f"({mem['per_session_over_raw']:.2f}x raw) + {mem['fixed_bytes'] / MB:.0f} MB fixed"
    )
    return _target(
        "memory",
        f"RSS at {big['sessions']:,} sessions <= 1.5x raw state + 300 MB",
        big["rss_after"] / allowance,
        1.0,
        at_most=True,
        detail=detail,
    )


def _step_target(r: dict[str, Any]) -> dict[str, Any]:
    rows = {row["position"]: row for row in r.get("steps", {}).get("stateful", []) if row["latency_ms"]}
    if len(rows) < 2:
        return _target(
            "step_cost",
            "step cost at the longest position within 10% of position 10",
            None,
            1.1,
            at_most=True,
            missing=r.get("steps", {}).get("status", ""),
        )
    first, last = min(rows), max(rows)
    a, b = rows[first]["latency_ms"]["p50"], rows[last]["latency_ms"]["p50"]
    return _target(
        "step_cost",
        f"step cost at position {last:,} within 10% of position {first}",
        b / a,
        1.1,
        at_most=True,
        detail=f"p50 {b:.2f} ms at {last:,} against {a:.2f} ms at {first}",
        profile=("main", "predict", 1),
    )


def evaluate(results: dict[str, Any], compare_at: int) -> list[dict[str, Any]]:
    return [
        *_stream_targets(results, compare_at),
        *_predict_targets(results, compare_at),
        _memory_target(results),
        _step_target(results),
    ]
