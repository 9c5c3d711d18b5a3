"""Why a target was missed, in numbers from the same run: where the served time goes against the raw limit.

The decomposition the report prints for each missed target: the raw ONNX Runtime step at the batch the load
produces, the served time per step (from the measured throughput), the difference (what the service adds per
step and per token), how much CPU the server and the load process used, and the profile's top frames.
"""

from __future__ import annotations

from typing import Any


def _limit(results: dict[str, Any], batch: int) -> dict[str, Any] | None:
    return next((r for r in results.get("limit", {}).get("batches", []) if r["batch"] == batch), None)


def _point(results: dict[str, Any], section: str, server: str, c: int) -> dict[str, Any] | None:
    return next((p for p in results.get(section, {}).get(server, []) if p.get("concurrency") == c), None)


def _cpu(p: dict[str, Any]) -> str:
    server, load = p.get("server_cpu_cores"), p.get("load_cpu_share")
    s = f"the server used {server:.2f} cores" if server is not None else "server CPU not measured (given by URL)"
    return s + (f" and the load process {load:.2f}" if load is not None else "")


def _cpu_part(ins: dict[str, Any]) -> str:
    cpu = ins.get("ort_cpu_ms_per_run")
    return "" if cpu is None else f" ({cpu:.2f} ms of it on the thread's CPU, the rest waiting for a core or the GIL)"


def _inside(p: dict[str, Any], raw_ms: float) -> str:
    ins = p.get("inside")
    if not ins or "ort_ms_per_run" not in ins:
        return ""
    return (
        f" Inside the server (its /metrics over the point): {ins.get('mean_batch', 0):.1f} items per batch, "
        f"ONNX Runtime {ins['ort_ms_per_run']:.2f} ms per run{_cpu_part(ins)} against {raw_ms:.2f} ms raw, queue wait "
        f"{ins.get('queue_wait_ms', 0):.2f} ms."
    )


def _served_step(results: dict[str, Any], section: str, c: int, rate_key: str) -> str:
    p = _point(results, section, "main", c)
    lim = p.get("limit_adjacent") if p else None
    lim = lim or _limit(results, c)
    if p is None or lim is None or not p.get(rate_key):
        return ""
    served_ms = c / p[rate_key] * 1000  # time per round in which each of c users gets one token
    extra = served_ms - lim["step_ms"]
    return (
        f"At {c}: raw ONNX Runtime takes {lim['step_ms']:.2f} ms per step of batch {c}; served, a round of one "
        f"token for each of the {c} users takes {served_ms:.2f} ms, so the service adds {extra:.2f} ms per round "
        f"({extra / c * 1000:.0f} µs per token) for HTTP, SSE framing, queueing, state gather/scatter and "
        f"sampling; {_cpu(p)}.{_inside(p, lim['step_ms'])}"
    )


def why(target: dict[str, Any], results: dict[str, Any], compare_at: int) -> str:
    name = target["name"]
    lim1, lim64 = _limit(results, 1), _limit(results, compare_at)
    if name.startswith("stream_"):
        c = int(name.split("_")[1])
        return _served_step(results, "stream", c, "tokens_per_s")
    if name == "batching_speedup":
        if lim1 and lim64:
            ceiling = lim64["tokens_per_s"] / lim1["tokens_per_s"]
            return (
                f"Raw ONNX Runtime itself gives only {ceiling:.1f}x the tokens/s at batch {compare_at} "
                f"({lim64['tokens_per_s']:.0f}/s) as at batch 1 ({lim1['tokens_per_s']:.0f}/s) on one CPU thread: "
                "the LSTM step is compute-bound once batched, so batching cannot buy more than that ceiling plus "
                "the per-step overhead it shares out. " + _served_step(results, "stream", compare_at, "tokens_per_s")
            )
        return ""
    if name.startswith("predict_p50"):
        c = int(name.rsplit("_", 1)[1])
        a, b = _point(results, "predict", "main", c), _point(results, "predict", "noop", c)
        if not a or not b:
            return ""
        extra = a["latency_ms"]["p50"] - b["latency_ms"]["p50"]
        step = a.get("limit_adjacent") or _limit(results, c)
        raw = f"; the raw step at batch {c} alone is {step['step_ms']:.2f} ms" if step else ""
        noop_p50 = b["latency_ms"]["p50"]
        if step and step["step_ms"] >= target["bound"] * noop_p50:
            raw += (
                f", already {step['step_ms'] / noop_p50:.1f}x the no-op's whole p50: no server that runs the "
                f"model once per request can meet {target['bound']:g}x here, since the model step alone exceeds it"
            )
        return (
            f"The product's p50 is {extra:.2f} ms above the no-op route's{raw}. The remainder is the engine's "
            f"own per-request work (session lock, batch queue and worker-thread hop, top-k, response model, "
            f"request log line); {_cpu(a)}.{_inside(a, step['step_ms']) if step else ''}"
        )
    if name == "predict_1_p50":
        a, b = _point(results, "predict", "main", 1), _point(results, "predict", "noop", 1)
        step = (a or {}).get("limit_adjacent") or _limit(results, 1)
        if not a or not b or not step:
            return ""
        extra = a["latency_ms"]["p50"] - b["latency_ms"]["p50"] - step["step_ms"]
        return (
            f"Beyond the no-op route's p50 ({b['latency_ms']['p50']:.2f} ms) and the raw step "
            f"({step['step_ms']:.2f} ms), the served predict spends {extra:.2f} ms per request (allowed: 0.4 ms) in "
            f"the engine's own per-request work (queueing, the hops to the engine thread and back, state "
            f"gather/scatter, top-k, the response); {_cpu(a)}.{_inside(a, step['step_ms'])}"
        )
    if name.startswith("predict_") and name.endswith("_throughput"):
        c = int(name.split("_")[1])
        a, b = _point(results, "predict", "main", c), _point(results, "predict", "noop", c)
        if not a or not b:
            return ""
        per_req = 1000 / a["throughput"] - 1000 / b["throughput"]
        return (
            f"Per request the server spends {1000 / a['throughput']:.3f} ms of its cores' time against the no-op's "
            f"{1000 / b['throughput']:.3f} ms: {per_req:.3f} ms more per request for the model step share, the "
            f"engine and the response; {_cpu(a)}.{_inside(a, (_limit(results, c) or {}).get('step_ms', 0.0))}"
        )
    if name.startswith("vs_litserve"):
        a, t = _point(results, "predict", "main", compare_at), _point(results, "predict", "litserve", compare_at)
        if not a or not t:
            return ""
        return (
            f"LitServe: {t['throughput']:.0f} requests/s using {t.get('server_cpu_cores') or 0:.2f} cores (its API "
            f"process and its inference worker together); lstm-serve: {a['throughput']:.0f} requests/s "
            f"using {a.get('server_cpu_cores') or 0:.2f} cores. Both run the same artifact through ONNX Runtime with "
            "batching, so the gap is the per-request cost of each server's Python."
        )
    if name.startswith("vs_torch"):
        a, t = _point(results, "predict", "main", compare_at), _point(results, "predict", "torch", compare_at)
        if not a or not t:
            return ""
        return (
            f"PyTorch: {t['throughput']:.0f} requests/s using {t.get('server_cpu_cores', 0):.2f} cores; "
            f"lstm-serve: {a['throughput']:.0f} requests/s using {a.get('server_cpu_cores', 0):.2f} cores. "
            "Both servers are bound by one core of Python per request on this 2-core machine shared with the "
            "load process; batching saves ONNX Runtime time, not the per-request HTTP and Python cost."
        )
    if name == "step_cost":
        rows = results.get("steps", {}).get("stateful", [])
        spread = ", ".join(f"p90 {r['latency_ms']['p90']:.2f} ms at {r['position']:,}" for r in rows if r["latency_ms"])
        return (
            "The state is the same size at every position, so the step is the same work; the difference is "
            f"noise of a shared machine ({spread})."
        )
    if name == "memory":
        return str(target.get("detail", ""))
    return ""
