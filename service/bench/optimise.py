"""Before/after figures of the optimisations the issue lists, each pair measured side by side in this run.

Server-level pairs run the same load against two servers that differ in one thing (uvloop + httptools against
asyncio + h11; per-request INFO logging against WARNING); ONNX Runtime thread counts are compared in-process;
the per-token and per-request costs on the hot path (sampling, top-k, response serialisation, state copies)
are timed as micro-benchmarks and set against the step they belong to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from service.bench.context import Context
from service.bench.limit import cpu_limit, step_stats, timed

# (what, before, after, server before, server after, load kinds): each pair differs in that one thing only.
PAIRS = (
    ("event loop and HTTP parser", "asyncio + h11", "uvloop + httptools (the product's)", "h11", "main", ("predict",)),
    ("per-request log line", "log level INFO (default)", "log level WARNING", "main", "quiet", ("predict",)),
    (
        "GIL switch interval",
        "5 ms (CPython's default)",
        "0.5 ms (the product's)",
        "switch",
        "main",
        ("predict", "stream"),
    ),
    ("FastAPI's native telemetry check", "on (FastAPI's default)", "off (the product's)", "otel", "main", ("predict",)),
    (
        "stream token groups",
        "every token woken and written alone (stream_group_tokens 1)",
        "up to 8 a write, none held over 20 ms (the product's)",
        "ungrouped",
        "main",
        ("stream",),
    ),
    (
        "predicts' softmax and top-k",
        "in Python on the engine thread (next_token_graph off)",
        "in the ONNX graph (the product's)",
        "pytopk",
        "main",
        ("predict",),
    ),
    ("load client", "Python asyncio client (service/bench/load.py)", "wrk (the bench's)", "noop", "noop", ("predict",)),
)


def server_pairs(ctx: Context) -> list[dict[str, Any]]:
    out = []
    cs = (1,) if ctx.plan.short else (1, ctx.plan.compare_at)
    for title, before, after, server_a, server_b, kinds in PAIRS:
        if not (ctx.has(server_a) and ctx.has(server_b)):
            continue
        extra_a: dict[str, Any] = {"driver": "python"} if title == "load client" else {}
        points = []
        for kind in kinds:
            for c in cs:
                a = ctx.point(kind, server_a, c, **extra_a)
                b = ctx.point(kind, server_b, c)
                points.append(
                    {
                        "kind": kind,
                        "concurrency": c,
                        "before": _fig(a),
                        "after": _fig(b),
                        "throughput_ratio": _ratio(b, a),
                    }
                )
        out.append({"what": title, "before": before, "after": after, "points": points})
    return out


def _fig(p: dict[str, Any]) -> dict[str, Any]:
    lat = p.get("itl_ms") or p.get("latency_ms", {})  # streams: inter-token latency
    return {
        "throughput": p.get("tokens_per_s") or p.get("throughput"),
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "server_cpu_cores": p.get("server_cpu_cores"),
        "load_cpu_share": p.get("load_cpu_share"),
    }


def _ratio(after: dict[str, Any], before: dict[str, Any]) -> float | None:
    a, b = _fig(after)["throughput"], _fig(before)["throughput"]
    return a / b if a and b else None


def ort_threads(ctx: Context) -> dict[str, Any]:
    batches = sorted({1, ctx.plan.compare_at, max(ctx.plan.limit_batches)})
    one = cpu_limit(ctx.model, batches, ctx.plan.limit_budget_s, intra_op_threads=1, prompt_chars=0)
    two = cpu_limit(ctx.model, batches, ctx.plan.limit_budget_s, intra_op_threads=2, prompt_chars=0)
    return {
        "what": "ONNX Runtime intra-op threads",
        "before": "1 (the product's default)",
        "after": "2",
        "points": [
            {
                "batch": a["batch"],
                "before_ms": a["step_ms"],
                "after_ms": b["step_ms"],
                "speedup": a["step_ms"] / b["step_ms"],
            }
            for a, b in zip(one["batches"], two["batches"], strict=True)
        ],
    }


def _us(fn: Callable[[], object], budget_s: float) -> float:
    return float(np.median(timed(fn, budget_s, min_calls=20))) * 1e6


def micro(ctx: Context) -> list[dict[str, Any]]:
    """Per-token and per-request costs of the hot path, in microseconds."""
    from service.api.schemas import SessionPredictResponse, TokenProbability, utc
    from service.engine.ort import OnnxRuntime
    from service.engine.sampling import SamplingBatch, sample
    from service.engine.topk import top_k
    from service.state.memory import MemoryStateStore

    budget = ctx.plan.limit_budget_s
    b = ctx.plan.compare_at
    rt = OnnxRuntime(ctx.model, "cpu", next_token=False)
    rng = np.random.default_rng(ctx.seed)
    logits = rng.standard_normal((b, rt.vocab_size)).astype(np.float32)
    batch = SamplingBatch.from_rows([0.8] * b, [0] * b, [0.95] * b, list(range(b)), [1] * b)
    rows = [SamplingBatch.from_rows([0.8], [0], [0.95], [i], [1]) for i in range(b)]
    vec = _us(lambda: sample(logits, batch), budget)
    loop = _us(lambda: [sample(logits[i : i + 1], rows[i]) for i in range(b)], budget)
    out: list[dict[str, Any]] = [
        {
            "what": f"sampling {b} streams' next tokens",
            "before": "one call per row",
            "after": "one vectorised call (the product's)",
            "before_us": loop,
            "after_us": vec,
            "speedup": loop / vec,
        }
    ]
    tok = ctx.meta.tokenizer
    nxt = top_k(logits[0], 5, tok)
    out.append({"what": "top-5 of one row (per predict request)", "us": _us(lambda: top_k(logits[0], 5, tok), budget)})

    def pydantic_body() -> bytes:
        r = SessionPredictResponse(
            session_id="q3Jx0b1s8T1nZq4lJYd2xA",
            position=17,
            expires_at=utc(2e9),
            next=[TokenProbability.of(t) for t in nxt],
        )
        return json.dumps(r.model_dump(mode="json")).encode()

    def orjson_body() -> bytes:
        return orjson.dumps(
            {
                "session_id": "q3Jx0b1s8T1nZq4lJYd2xA",
                "position": 17,
                "expires_at": utc(2e9),
                "next": [{"token": t.token, "id": t.id, "prob": t.prob} for t in nxt],
            }
        )

    before, after = _us(pydantic_body, budget), _us(orjson_body, budget)
    out.append(
        {
            "what": "predict response body",
            "before": "pydantic model + json.dumps",
            "after": "dict + orjson",
            "before_us": before,
            "after_us": after,
            "speedup": before / after,
        }
    )
    out.append(_state_copies(rt, b, budget, MemoryStateStore))
    return out


def _state_copies(rt: Any, b: int, budget: float, store_cls: Any) -> dict[str, Any]:
    """Gathering b sessions' states before a step and scattering them after, against the step itself."""
    store = store_cls(rt.layers, rt.hidden, b)
    ids = [asyncio.run(store.create(ttl_s=3600.0)).session_id for _ in range(b)]
    loaded = asyncio.run(store.load_many(ids))
    versions = [r.version for r in loaded.records]

    async def round_trip() -> None:
        got = await store.load_many(ids)
        h, c = got.h.copy(), got.c.copy()  # the staircase's working copies
        done = await store.save_many(ids, h, c, [1] * b, versions)
        versions[:] = [r.version for r in done]

    loop = asyncio.new_event_loop()
    try:
        copies = _us(lambda: loop.run_until_complete(round_trip()), budget)
    finally:
        loop.close()
    state = [np.zeros((rt.layers, b, rt.hidden), dtype=np.float32)] * 2
    ids_arr = np.zeros((b, 1), dtype=np.int64)
    step = step_stats(timed(lambda: rt.run(ids_arr, state[0], state[1]), budget), b)["step_ms"] * 1000
    return {
        "what": f"state gather + scatter for a batch of {b}",
        "us": copies,
        "step_us": step,
        "share_of_step": copies / step,
    }


def scenario_optimisations(ctx: Context) -> dict[str, Any]:
    try:
        hot_path = micro(ctx)
    except Exception as exc:  # the micro-benchmarks call engine internals that may have moved; keep the rest
        hot_path = [{"what": "hot-path micro-benchmarks", "us": float("nan"), "status": f"failed: {exc!r}"}]
    return {"servers": server_pairs(ctx), "ort_threads": ort_threads(ctx), "micro": hot_path}
