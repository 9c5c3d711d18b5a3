"""One markdown section per scenario of the report; each returns its lines (empty when the scenario did not run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Plots = dict[str, str]


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _status(name: str, section: dict[str, Any] | None) -> list[str] | None:
    """The lines for a scenario that did not run, or None when it has results."""
    if not section:
        return [f"{name}: not run (not selected).", ""]
    if "status" in section and section["status"] != "ok":
        return [f"{name}: {section['status']}.", ""]
    return None


def _limit_at(results: dict[str, Any], batch: int) -> float | None:
    row = next((r for r in results.get("limit", {}).get("batches", []) if r["batch"] == batch), None)
    return None if row is None else float(row["tokens_per_s"])


def _adjacent(p: dict[str, Any] | None) -> float | None:
    """The raw limit measured right next to this point, when there is one."""
    return None if not p or "limit_adjacent" not in p else float(p["limit_adjacent"]["tokens_per_s"])


def _lat(p: dict[str, Any] | None, key: str = "latency_ms") -> str:
    if not p or not p.get(key):
        return "n/a"
    return f"{p[key]['p50']:.2f} / {p[key]['p99']:.2f}"


def _img(plots: Plots, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[name]})", ""] if name in plots else []


def section_limit(results: dict[str, Any], plots: Plots) -> list[str]:
    lim = results.get("limit")
    head = ["## 1. The limit: raw ONNX Runtime in-process", ""]
    if (s := _status("The limit", lim)) is not None:
        return head + s
    assert lim is not None
    rows = [
        [str(r["batch"]), fmt(r["step_ms"], 3), fmt(r["tokens_per_s"], 0), fmt(r["step_ms"] * 1000 / r["batch"], 1)]
        for r in lim["batches"]
    ]
    lines = [
        *head,
        f"One step = one `session.run` of one token per row from the previous step's states, with the "
        f"server's session options ({lim['intra_op_threads']} intra-op thread, no spinning). Median of "
        "repeated calls.",
        "",
        *table(["batch", "step (ms)", "tokens/s", "µs per token"], rows),
        "",
    ]
    if "prompt" in lim:
        p = lim["prompt"]
        lines += [
            f"Prompt ingestion: {p['chars']:,} characters in one call take {p['ms']:.1f} ms "
            f"({p['chars_per_s']:,.0f} characters/s, {p['per_char_us']:.0f} µs each).",
            "",
        ]
    return lines


def section_predict(results: dict[str, Any], plots: Plots) -> list[str]:
    pred = results.get("predict")
    head = ["## 2. Session predict over HTTP (with the no-op floor, batching off, and the PyTorch baseline)", ""]
    if (s := _status("Session predict", pred)) is not None:
        return head + s
    assert pred is not None
    cs = sorted({p["concurrency"] for points in pred.values() for p in points})

    def at(name: str, c: int) -> dict[str, Any] | None:
        return next((p for p in pred.get(name, []) if p["concurrency"] == c and "throughput" in p), None)

    rows = []
    for c in cs:
        main, noop = at("main", c), at("noop", c)
        lim = _adjacent(main) or _limit_at(results, c)
        rows.append(
            [
                str(c),
                *(fmt(p["throughput"], 0) if p else "n/a" for p in (main, at("off", c), at("torch", c), noop)),
                _lat(main),
                _lat(at("off", c)),
                _lat(at("torch", c)),
                _lat(noop),
                fmt(main["latency_ms"]["p50"] / noop["latency_ms"]["p50"]) + "x" if main and noop else "n/a",
                fmt(main["throughput"] / lim, 2) if main and lim else "n/a",
            ]
        )
    return [
        *head,
        "Closed loop: each session sends one character, waits for the answer, sends the next.",
        "",
        *_img(plots, "predict", "throughput and latency against concurrency"),
        *table(
            [
                "sessions",
                "req/s on",
                "req/s off",
                "req/s PyTorch",
                "req/s no-op",
                "p50/p99 ms on",
                "p50/p99 off",
                "p50/p99 PyTorch",
                "p50/p99 no-op",
                "p50 on / no-op",
                "on / raw limit",
            ],
            rows,
        ),
        "",
    ]


def section_stream(results: dict[str, Any], plots: Plots) -> list[str]:
    st = results.get("stream")
    head = ["## 3. Streaming generation over SSE (batching on and off)", ""]
    if (s := _status("Streaming generation", st)) is not None:
        return head + s
    assert st is not None
    rows = []
    for p in st.get("main", []):
        c = p["concurrency"]
        off = next((q for q in st.get("off", []) if q["concurrency"] == c), None)
        lim = _adjacent(p) or _limit_at(results, c)
        tps = p.get("tokens_per_s")
        rows.append(
            [
                str(c),
                fmt(tps, 0),
                fmt(off.get("tokens_per_s"), 0) if off else "n/a",
                fmt(tps / off["tokens_per_s"]) + "x" if tps and off and off.get("tokens_per_s") else "n/a",
                fmt(lim, 0),
                fmt(tps / lim) if tps and lim else "n/a",
                _lat(p, "ttft_ms"),
                _lat(p, "itl_ms"),
            ]
        )
    tokens = results["meta"]["plan"]["stream_tokens"]
    return [
        *head,
        f"Each stream generates {tokens} tokens per request (temperature 0.8, seeded), back to back.",
        "",
        *_img(plots, "stream", "tokens/s against concurrent streams beside the raw limit"),
        *table(
            [
                "streams",
                "tokens/s on",
                "tokens/s off",
                "on / off",
                "raw limit (next to it)",
                "on / limit",
                "TTFT p50/p99 ms",
                "inter-token p50/p99 ms",
            ],
            rows,
        ),
        "",
    ]


def section_baselines(results: dict[str, Any], plots: Plots) -> list[str]:
    c = results["meta"]["plan"]["compare_at"]
    pred = results.get("predict", {})
    main = next((p for p in pred.get("main", []) if p["concurrency"] == c), None)
    torch = next((p for p in pred.get("torch", []) if p["concurrency"] == c), None)
    resend = results.get("resend")
    lines = [f"## 5. Baselines at {c} sessions", ""]
    rows = []
    for label, p in (
        ("lstm-serve (stateful sessions, batching)", main),
        ("(a) FastAPI + PyTorch eager, states in a dict, one forward per request", torch),
        ("(b) stateless: re-send the whole text to /v1/predict", resend),
    ):
        if p and "throughput" in p:
            rows.append([label, fmt(p["throughput"], 0), _lat(p), fmt(p.get("server_cpu_cores"))])
    lines += [*table(["server", "req/s", "p50/p99 ms", "server CPU (cores)"], rows), ""]
    if resend and "mean_text_length" in resend:
        lines += [
            f"The re-sent texts averaged {resend['mean_text_length']:.0f} characters by the end of the window "
            "(they start from the same prefix the sessions were primed with and grow by one character per "
            "request).",
            "",
        ]
    return lines


def section_memory(results: dict[str, Any], plots: Plots) -> list[str]:
    mem = results.get("memory")
    head = ["## 6. Memory per session", ""]
    if (s := _status("Memory", mem)) is not None:
        return head + s
    assert mem is not None
    rows = [
        [
            f"{p['sessions']:,}",
            fmt(p["rss_before"] / 1e6, 0),
            fmt(p["rss_after"] / 1e6, 0),
            fmt(p["raw_state"] / 1e6, 0),
            fmt(p["growth_per_session"], 0),
            fmt(p["growth_over_raw"]) + "x",
        ]
        for p in mem["points"]
    ]
    lines = [
        *head,
        "The in-memory store filled with N sessions whose states were written, in a fresh process that "
        "has loaded the model as a server does.",
        "",
        *_img(plots, "memory", "memory against sessions"),
        *table(
            ["sessions", "RSS before (MB)", "RSS after (MB)", "raw state (MB)", "bytes per session", "growth / raw"],
            rows,
        ),
        "",
    ]
    if "per_session_bytes" in mem:
        lines += [
            f"Fit over the two counts: {mem['per_session_bytes']:,.0f} bytes per session "
            f"({mem['per_session_over_raw']:.3f}x the raw state) plus {mem['fixed_bytes'] / 1e6:.0f} MB fixed.",
            "",
        ]
    return lines


def section_steps(results: dict[str, Any], plots: Plots) -> list[str]:
    st = results.get("steps")
    head = ["## 7. Step cost against session position", ""]
    if (s := _status("Step cost", st)) is not None:
        return head + s
    assert st is not None
    rows = [
        [f"{r['position']:,}", "stateful, one character", _lat(r), f"fed in {r['feed_s']:.1f} s"]
        for r in st.get("stateful", [])
    ]
    rows += [[f"{r['length']:,}", "stateless re-send", _lat(r), "measured"] for r in st.get("resend", [])]
    rows += [
        [f"{r['length']:,}", "stateless re-send", f"~{r['p50_ms']:.0f} (p50)", "extrapolated linearly"]
        for r in st.get("resend_extrapolated", [])
    ]
    return [
        *head,
        "Sessions brought to each position (1,000-character pieces), then stepped one character at a "
        "time, round-robin so drift hits every position alike.",
        "",
        *_img(plots, "steps", "step cost against session length"),
        *table(["position / length", "how", "p50/p99 ms", ""], rows),
        "",
    ]


def section_gpu(results: dict[str, Any], plots: Plots) -> list[str]:
    gpu = results.get("gpu")
    head = ["## 8. GPU (CUDA provider, I/O binding)", ""]
    if (s := _status("GPU", gpu)) is not None:
        return head + s
    assert gpu is not None
    rows = [
        [
            str(r["batch"]),
            fmt(r["plain"]["step_ms"], 3),
            fmt(r["io_binding"]["step_ms"], 3),
            fmt(r["speedup"]) + "x",
            fmt(r["state_download_ms"], 3),
        ]
        for r in gpu["batches"]
    ]
    return [
        *head,
        f"Device: {gpu.get('device')}.",
        "",
        *table(["batch", "plain step (ms)", "I/O-bound step (ms)", "speedup", "state copy to host (ms)"], rows),
        "",
    ]


def section_optimisations(results: dict[str, Any], plots: Plots) -> list[str]:
    opt = results.get("optimisations")
    head = ["## Optimisations: before and after, measured side by side", ""]
    if (s := _status("Optimisations", opt)) is not None:
        return head + s
    assert opt is not None
    rows = []
    for pair in opt.get("servers", []):
        for p in pair["points"]:
            b, a = p["before"], p["after"]
            rows.append(
                [
                    pair["what"],
                    f"{pair['before']} → {pair['after']}",
                    f"{p['kind']} at {p['concurrency']}",
                    f"{fmt(b['throughput'], 0)} → {fmt(a['throughput'], 0)}",
                    f"{fmt(b['p50_ms'])} → {fmt(a['p50_ms'])}",
                    fmt(p["throughput_ratio"]) + "x",
                ]
            )
    lines = [
        *head,
        "Throughput is requests/s for predict and tokens/s for streams; p50 is the request latency, or the "
        "inter-token latency for streams.",
        "",
        *table(["what", "before → after", "load", "throughput", "p50 ms", "throughput ratio"], rows),
        "",
    ]
    thr = opt.get("ort_threads")
    if thr:
        rows = [
            [str(p["batch"]), fmt(p["before_ms"], 3), fmt(p["after_ms"], 3), fmt(p["speedup"]) + "x"]
            for p in thr["points"]
        ]
        lines += [
            *table(["ORT intra-op threads 1 → 2: batch", "step ms (1 thread)", "step ms (2 threads)", "speedup"], rows),
            "",
        ]
    micro = []
    for m in opt.get("micro", []):
        if "before_us" in m:
            micro.append(
                [
                    m["what"],
                    f"{m['before']}: {m['before_us']:.1f} µs → {m['after']}: {m['after_us']:.1f} µs",
                    fmt(m["speedup"]) + "x",
                ]
            )
        elif "share_of_step" in m:
            micro.append(
                [
                    m["what"],
                    f"{m['us']:.0f} µs against a {m['step_us']:.0f} µs step",
                    f"{m['share_of_step']:.1%} of the step",
                ]
            )
        else:
            micro.append([m["what"], f"{m['us']:.1f} µs", ""])
    return [*lines, *table(["hot-path cost", "figure", "ratio"], micro), ""]
