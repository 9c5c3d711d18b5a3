"""The issue's scenarios, each a function of the run's Context returning a JSON-able dict.

Points that are compared are measured next to each other (per concurrency: the no-op floor, batching on,
batching off, the LitServe and PyTorch peers), so drift on a shared machine moves them together.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from service.bench import limit
from service.bench.context import Context
from service.bench.servers import ROOT, clean_env

NOT_RUN = "not run: server not started"


def scenario_limit(ctx: Context) -> dict[str, Any]:
    """Raw ONNX Runtime of the served artifact (the limit every figure is read against), with every bundled
    precision of the same model measured side by side (`by_precision`: fp32 and int8)."""
    p = ctx.plan
    models = ctx.artifacts or {ctx.precision: ctx.model}
    both = limit.cpu_limits(models, p.limit_batches, p.limit_budget_s)
    served = both[ctx.precision]
    return {**served, "served": ctx.precision, "by_precision": both}


PREDICT_SERVERS = ("noop", "main", "off", "litserve", "torch")


def scenario_predict(ctx: Context) -> dict[str, Any]:
    """Scenarios 2, 4 and 5a: closed-loop session predict, one character per request, per concurrency."""
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in PREDICT_SERVERS}
    for c in ctx.plan.concurrencies:
        for name, points in series.items():
            if ctx.has(name):
                points.append(ctx.point("predict", name, c))
                if name == "main":
                    points[-1]["limit_adjacent"] = ctx.limit_now(c)
    return {name: points for name, points in series.items() if points}


def scenario_resend(ctx: Context) -> dict[str, Any]:
    """Scenario 5b: stateless serving, each user re-sends its whole (growing) text to /v1/predict."""
    return ctx.point("resend", "main", ctx.plan.compare_at)


def scenario_stream(ctx: Context) -> dict[str, Any]:
    """Scenarios 3 and 4: streaming generation over SSE, batching on and off, beside the no-op SSE route."""
    out: dict[str, Any] = {"noop": [], "main": [], "off": []}
    for c in ctx.plan.stream_concurrencies:
        for name in ("noop", "main", "off"):
            if not ctx.has(name):
                continue
            point = ctx.point("stream", name, c)
            if str(point.get("status", "")).startswith("not run"):
                return {"status": point["status"]}
            if name == "main":
                point["limit_adjacent"] = ctx.limit_now(c)
            out[name].append(point)
    return out


def scenario_steps(ctx: Context) -> dict[str, Any]:
    """Scenario 7: step cost at several session positions against the stateless re-send."""
    p = ctx.plan
    result = ctx.point(
        "steps",
        "main",
        1,
        positions=list(p.positions),
        resend_lengths=list(p.resend_lengths),
        rounds=p.step_rounds,
        resend_rounds=max(3, p.step_rounds // 4),
        chunk=1000,
    )
    resend = [r for r in result.get("resend", []) if r["latency_ms"]]
    if len(resend) >= 2:
        # The re-send grows linearly with the text: extrapolate from the two longest lengths measured.
        (n0, a), (n1, b) = ((r["length"], r["latency_ms"]["p50"]) for r in resend[-2:])
        slope = (b - a) / (n1 - n0)
        result["resend_extrapolated"] = [{"length": n, "p50_ms": b + slope * (n - n1)} for n in p.positions if n > n1]
        result["resend_ms_per_char"] = slope
    return result


def scenario_memory(ctx: Context) -> dict[str, Any]:
    """Scenario 6: a fresh process per session count (service/bench/memory.py)."""
    points = []
    for n in ctx.plan.memory_sessions:
        cmd = [sys.executable, "-m", "service.bench.memory", "--model", str(ctx.model), "--sessions", str(n)]
        done = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return {"status": f"failed: {done.stderr[-500:]}"}
        points.append(json.loads(done.stdout))
    out: dict[str, Any] = {"points": points}
    if len(points) >= 2:
        a, b = points[0], points[-1]
        slope = (b["rss_after"] - a["rss_after"]) / (b["sessions"] - a["sessions"])  # bytes per session
        out["per_session_bytes"] = slope
        out["per_session_over_raw"] = slope / b["raw_per_session"]
        out["fixed_bytes"] = b["rss_after"] - slope * b["sessions"]
    return out


def scenario_gpu(ctx: Context) -> dict[str, Any]:
    """Scenario 8: only where the CUDA provider can run; otherwise it says why not, with no numbers."""
    result = limit.gpu_limit(ctx.model, ctx.plan.limit_batches, ctx.plan.limit_budget_s)
    if result.get("status") == "ok" and ctx.has("gpu"):
        result["predict"] = ctx.point("predict", "gpu", ctx.plan.compare_at)
        result["stream"] = ctx.point("stream", "gpu", ctx.plan.compare_at)
    return result
