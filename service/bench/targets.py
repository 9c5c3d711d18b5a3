"""The issue's targets, each read from this run's results as a ratio of two figures measured in the same run.

A target whose figures are missing is reported as not evaluated (with why), never as met. "The limit" of a
figure is min(raw ONNX Runtime of the served model at that batch size, the no-op floor for that kind of
request). Each target names the load point a profile should be taken of when it is missed (`profile`:
server, job kind, concurrency).
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


def _stream_limit(r: dict[str, Any], c: int) -> tuple[float | None, str]:
    """The limit of c streams: min(raw ORT tokens/s of the served model at batch c, the no-op SSE route's)."""
    stream = r.get("stream", {})
    p, noop = _at(stream.get("main", []), c), _at(stream.get("noop", []), c)
    raw = p["limit_adjacent"]["tokens_per_s"] if p and "limit_adjacent" in p else _limit_tps(r, c)
    floor = noop.get("tokens_per_s") if noop else None
    parts = [x for x in (raw, floor) if x]
    if not parts:
        return None, ""
    which = "raw ORT" if raw and (not floor or raw <= floor) else "the no-op SSE route"
    text = f"raw ORT at batch {c} {raw:.0f}" if raw else "raw ORT n/a"
    text += f", no-op SSE {floor:.0f}" if floor else ", no-op SSE n/a"
    return min(parts), f"{text} tokens/s; the limit is {which}"


def _stream_targets(r: dict[str, Any], c64: int) -> list[dict[str, Any]]:
    stream = r.get("stream", {})
    why = stream.get("status", "")
    out = []
    for c in (1, c64):
        p = _at(stream.get("main", []), c)
        lim, how = _stream_limit(r, c)
        value = p["tokens_per_s"] / lim if p and lim else None
        detail = f"{p['tokens_per_s']:.0f} tokens/s against a limit of {lim:.0f} ({how})" if p and lim else ""
        out.append(
            _target(
                f"stream_{c}_vs_limit",
                f"{c} SSE stream(s): tokens/s >= 0.4x the limit",
                value,
                0.4,
                detail=detail,
                profile=("main", "stream", c),
                missing=why,
            )
        )
    return out


STEP_ALLOWANCE_MS = 0.4  # what the served predict may add to the no-op floor plus the raw step


def _predict_targets(r: dict[str, Any], c64: int) -> list[dict[str, Any]]:
    pred = r.get("predict", {})
    out = []
    a, b = _at(pred.get("main", []), 1), _at(pred.get("noop", []), 1)
    step = (a or {}).get("limit_adjacent") or next(
        (row for row in r.get("limit", {}).get("batches", []) if row["batch"] == 1), None
    )
    value, detail = None, ""
    if a and b and step:
        bound_ms = b["latency_ms"]["p50"] + step["step_ms"] + STEP_ALLOWANCE_MS
        value = a["latency_ms"]["p50"] / bound_ms
        detail = (
            f"p50 {a['latency_ms']['p50']:.2f} ms against no-op p50 {b['latency_ms']['p50']:.2f} + raw step "
            f"{step['step_ms']:.2f} + {STEP_ALLOWANCE_MS} = {bound_ms:.2f} ms"
        )
    out.append(
        _target(
            "predict_1_p50",
            f"predict, 1 session: p50 <= no-op p50 + raw batch-1 step + {STEP_ALLOWANCE_MS} ms",
            value,
            1.0,
            at_most=True,
            detail=detail,
            profile=("main", "predict", 1),
        )
    )
    a, b = _at(pred.get("main", []), c64), _at(pred.get("noop", []), c64)
    out.append(
        _target(
            f"predict_{c64}_throughput",
            f"predict, {c64} sessions: throughput >= 0.6x the no-op route's",
            a["throughput"] / b["throughput"] if a and b and b["throughput"] else None,
            0.6,
            detail=f"{a['throughput']:.0f} against {b['throughput']:.0f} requests/s" if a and b else "",
            profile=("main", "predict", c64),
        )
    )
    a, t = _at(pred.get("main", []), c64), _at(pred.get("litserve", []), c64)
    tput = a["throughput"] / t["throughput"] if a and t and t["throughput"] else None
    p99 = a["latency_ms"]["p99"] / t["latency_ms"]["p99"] if a and t else None
    detail = (
        (
            f"{a['throughput']:.0f} against {t['throughput']:.0f} requests/s; p99 {a['latency_ms']['p99']:.1f} "
            f"against {t['latency_ms']['p99']:.1f} ms"
        )
        if a and t
        else ""
    )
    no_peer = "" if "litserve" in pred else "not measured: the LitServe peer did not run (pip install litserve)"
    out.append(
        _target(
            "vs_litserve_throughput",
            f"vs LitServe + ORT + dict at {c64} sessions: >= 4x throughput",
            tput,
            4.0,
            detail=detail,
            profile=("main", "predict", c64),
            missing=no_peer,
        )
    )
    out.append(
        _target(
            "vs_litserve_p99",
            f"vs LitServe + ORT + dict at {c64} sessions: a lower p99",
            p99,
            1.0,
            at_most=True,
            detail=detail,
            profile=("main", "predict", c64),
            missing=no_peer,
        )
    )
    return out


INT8_SPEEDUP = 2.5
INT8_MAX_LOSS = 0.01  # nats/char above fp32's


def _int8_targets(r: dict[str, Any], c64: int) -> list[dict[str, Any]]:
    both = r.get("limit", {}).get("by_precision", {})
    fp32, int8 = both.get("fp32", {}), both.get("int8", {})
    why = "" if int8 else "not measured: no int8 artifact beside the model (lstm-serve quantize)"
    out = []
    for c in (1, c64):
        a = next((x for x in int8.get("batches", []) if x["batch"] == c), None)
        b = next((x for x in fp32.get("batches", []) if x["batch"] == c), None)
        out.append(
            _target(
                f"int8_speed_{c}",
                f"int8 raw ORT >= {INT8_SPEEDUP}x fp32 at batch {c}",
                a["tokens_per_s"] / b["tokens_per_s"] if a and b else None,
                INT8_SPEEDUP,
                detail=f"{a['tokens_per_s']:.0f} against {b['tokens_per_s']:.0f} tokens/s" if a and b else "",
                missing=why,
            )
        )
    arts = r.get("meta", {}).get("artifacts", {})
    la, lb = arts.get("int8", {}).get("val_loss"), arts.get("fp32", {}).get("val_loss")
    diff = la - lb if la is not None and lb is not None else None
    out.append(
        {
            **_target(
                "int8_loss",
                f"int8 held-out loss within {INT8_MAX_LOSS} nats/char of fp32",
                diff,
                INT8_MAX_LOSS,
                at_most=True,
                detail=f"{la:.4f} against {lb:.4f} nats/char (recorded in each artifact's metadata)"
                if diff is not None
                else "",
                missing=why or "not measured: an artifact has no recorded val_loss",
            ),
            "unit": " nats/char",
        }
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
        *_predict_targets(results, compare_at),
        *_stream_targets(results, compare_at),
        *_int8_targets(results, compare_at),
        _memory_target(results),
        _step_target(results),
    ]
