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
    head = ["## 1. The limit: raw ONNX Runtime in-process, fp32 and int8 side by side", ""]
    if (s := _status("The limit", lim)) is not None:
        return head + s
    assert lim is not None
    both: dict[str, Any] = lim.get("by_precision") or {lim.get("served", "fp32"): lim}
    names = [n for n in ("fp32", "int8") if n in both] + [n for n in both if n not in ("fp32", "int8")]
    served = lim.get("served", names[0])
    batches = [r["batch"] for r in both[names[0]]["batches"]]
    rows = []
    for b in batches:
        cells = [str(b)]
        got = {n: next((r for r in both[n]["batches"] if r["batch"] == b), None) for n in names}
        for n in names:
            r = got[n]
            cells += [fmt(r["step_ms"], 3), fmt(r["tokens_per_s"], 0)] if r else ["n/a", "n/a"]
        if "fp32" in got and "int8" in got and got["fp32"] and got["int8"]:
            cells.append(fmt(got["int8"]["tokens_per_s"] / got["fp32"]["tokens_per_s"]) + "x")
        rows.append(cells)
    header = ["batch"]
    for n in names:
        mark = " (served)" if n == served else ""
        header += [f"{n}{mark} step (ms)", f"{n} tokens/s"]
    if "fp32" in names and "int8" in names:
        header.append("int8 / fp32")
    lines = [
        *head,
        f"One step = one `session.run` of one token per row from the previous step's states, with the "
        f"server's session options ({lim['intra_op_threads']} intra-op thread, no spinning). Median of "
        "repeated calls; the artifacts are measured batch by batch in turn, so drift hits both alike. The HTTP "
        f"scenarios run the served default ({served}: what `lstm-serve serve` picks on the CPU provider).",
        "",
        *table(header, rows),
        "",
    ]
    arts = results["meta"].get("artifacts", {})
    if arts:
        lines += [
            *table(
                ["artifact", "file", "size (MB)", "held-out loss (nats/char)", "prompt: 1,000 chars in one call"],
                [
                    [
                        n,
                        f"`{a['path']}`",
                        fmt(a["bytes"] / 1e6, 1),
                        fmt(a["val_loss"], 4) if a.get("val_loss") is not None else "n/a",
                        f"{both[n]['prompt']['ms']:.1f} ms" if both.get(n, {}).get("prompt") else "n/a",
                    ]
                    for n, a in arts.items()
                ],
            ),
            "",
        ]
    elif "prompt" in lim:
        p = lim["prompt"]
        lines += [f"Prompt ingestion: {p['chars']:,} characters in one call take {p['ms']:.1f} ms.", ""]
    return lines


def _limit_of(raw: float | None, floor: float | None) -> float | None:
    """The limit of a figure: min(raw ONNX Runtime at that batch, the no-op floor for that kind of request)."""
    parts = [x for x in (raw, floor) if x]
    return min(parts) if parts else None


def section_predict(results: dict[str, Any], plots: Plots) -> list[str]:
    pred = results.get("predict")
    head = ["## 2. Session predict over HTTP (wrk; with the no-op floor, batching off and the peers)", ""]
    if (s := _status("Session predict", pred)) is not None:
        return head + s
    assert pred is not None
    cs = sorted({p["concurrency"] for points in pred.values() for p in points})

    def at(name: str, c: int) -> dict[str, Any] | None:
        return next((p for p in pred.get(name, []) if p["concurrency"] == c and "throughput" in p), None)

    names = ("main", "off", "litserve", "torch", "noop")
    rows = []
    for c in cs:
        main, noop = at("main", c), at("noop", c)
        lim = _limit_of(_adjacent(main) or _limit_at(results, c), noop["throughput"] if noop else None)
        rows.append(
            [
                str(c),
                *(fmt(p["throughput"], 0) if p else "n/a" for p in (at(n, c) for n in names)),
                *(_lat(at(n, c)) for n in names),
                fmt(main["throughput"] / lim, 2) if main and lim else "n/a",
            ]
        )
    clients = sorted({str(p.get("client", "python")) for points in pred.values() for p in points})
    return [
        *head,
        "Closed loop: each session sends one character, waits for the answer, sends the next; one session per "
        f"connection. Client: {', '.join(clients)} (`wrk -t N -c N --latency` with a Lua script that gives each "
        "connection its own session and prints the percentiles from `done()`). The limit is min(raw ONNX Runtime "
        "at batch = sessions, the no-op route).",
        "",
        *_img(plots, "predict", "throughput and latency against concurrency"),
        *table(
            [
                "sessions",
                "req/s lstm-serve",
                "req/s batching off",
                "req/s LitServe",
                "req/s PyTorch",
                "req/s no-op",
                "p50/p99 ms lstm-serve",
                "p50/p99 off",
                "p50/p99 LitServe",
                "p50/p99 PyTorch",
                "p50/p99 no-op",
                "lstm-serve / limit",
            ],
            rows,
        ),
        "",
    ]


def section_stream(results: dict[str, Any], plots: Plots) -> list[str]:
    st = results.get("stream")
    head = ["## 3. Streaming generation over SSE (curl --parallel; with the no-op SSE floor, batching on and off)", ""]
    if (s := _status("Streaming generation", st)) is not None:
        return head + s
    assert st is not None
    rows = []
    for p in st.get("main", []):
        c = p["concurrency"]
        off = next((q for q in st.get("off", []) if q["concurrency"] == c), None)
        noop = next((q for q in st.get("noop", []) if q["concurrency"] == c), None)
        raw = _adjacent(p) or _limit_at(results, c)
        floor = noop.get("tokens_per_s") if noop else None
        lim = _limit_of(raw, floor)
        tps = p.get("tokens_per_s")
        rows.append(
            [
                str(c),
                fmt(tps, 0),
                fmt(off.get("tokens_per_s"), 0) if off else "n/a",
                fmt(floor, 0),
                fmt(raw, 0),
                fmt(tps / lim) if tps and lim else "n/a",
                _lat(p, "ttft_ms"),
                _lat(p, "itl_ms"),
            ]
        )
    seconds = results["meta"]["plan"]["duration_s"]
    return [
        *head,
        f"N streaming generations at once, one per session, each asking for more tokens than the {seconds:g} s "
        "window allows (temperature 0.8, seeded) and cut by the client when it ends; tokens counted from the "
        "streams' output. Client: `curl --parallel --parallel-immediate --parallel-max N -K FILE` (N POSTs with "
        '`"stream": true`). The limit is min(raw ONNX Runtime at batch = streams, the no-op SSE route). Time to '
        "first byte is curl's `time_starttransfer`; the inter-token figure is each stream's mean gap.",
        "",
        *_img(plots, "stream", "tokens/s against concurrent streams beside the raw limit"),
        *table(
            [
                "streams",
                "tokens/s lstm-serve",
                "tokens/s batching off",
                "tokens/s no-op SSE",
                "raw ORT (next to it)",
                "lstm-serve / limit",
                "first byte p50/p99 ms",
                "inter-token mean p50/p99 ms",
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
    lit = next((p for p in pred.get("litserve", []) if p["concurrency"] == c), None)
    resend = results.get("resend")
    lines = [f"## 5. Baselines at {c} sessions", ""]
    rows = []
    for label, p in (
        ("lstm-serve (stateful sessions, batching)", main),
        ("LitServe + ONNX Runtime (same artifact) + a dict of states, its dynamic batching up to 64", lit),
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
        elif "status" in m:
            micro.append([m["what"], m["status"], ""])
        else:
            micro.append([m["what"], f"{m['us']:.1f} µs", ""])
    return [*lines, *table(["hot-path cost", "figure", "ratio"], micro), ""]


def section_fairness(results: dict[str, Any], plots: Plots) -> list[str]:
    fair = results.get("fairness")
    head = ["## 10. Fair scheduling: short steps beside long prompts", ""]
    if fair is None:
        return [*head, "Not run (`--only` left it out).", ""]
    rows = [
        [
            label,
            str(p.get("short_requests", "-")),
            fmt(p.get("p50_ms")),
            fmt(p.get("p99_ms")),
            fmt(p.get("long_chars_per_s"), 0),
        ]
        for label, p in (
            ("chunked prefill (default)", fair.get("main") or {}),
            ("whole inputs (0)", fair.get("unchunked") or {}),
        )
    ]
    ratio = fair.get("p99_ratio_on_off")
    return [
        *head,
        f"One-character predicts on one session while {fair['long_clients']} clients send "
        f"{fair['long_chars']:,}-character prompts to /v1/predict, {fair['seconds']:g} s each, servers side by side "
        "(`--prefill-chunk-tokens 0` feeds inputs whole).",
        "",
        *table(["server", "short predicts", "p50 (ms)", "p99 (ms)", "long chars/s"], rows),
        "",
        f"p99 with chunking / without: {fmt(ratio)}x." if ratio is not None else "",
        "",
    ]


def _pair(p: dict[str, Any], kind: str) -> str:
    a, b = ("p50_ms", "p99_ms") if kind == "predict" else ("first_byte_ms", "inter_token_ms")
    return f"{fmt(p.get(a))} / {fmt(p.get(b))}"


def section_durable(results: dict[str, Any], plots: Plots) -> list[str]:
    dur = results.get("durable")
    head = ["## 11. Durable mode: the journal's cost (`--durable`, one write and one fsync per batch)", ""]
    if (s := _status("Durable mode", dur)) is not None:
        return head + s
    assert dur is not None
    rows = []
    for row in dur.get("points", []):
        off, on, ratio = row.get("main") or {}, row.get("durable") or {}, row.get("ratio_durable_off") or {}
        kind, c = row["kind"], row["concurrency"]
        many = "s" if c > 1 else ""
        what = f"predict, {c} session{many} (req/s)" if kind == "predict" else f"SSE, {c} stream{many} (tokens/s)"
        rows.append(
            [
                what,
                fmt(off.get("throughput"), 0),
                fmt(on.get("throughput"), 0),
                fmt(ratio.get("throughput")),
                _pair(off, kind),
                _pair(on, kind),
                _pair(ratio, kind),
            ]
        )
    return [
        *head,
        "The product server as it ships (durable off) beside the same flags plus `--durable --snapshot-path FILE` "
        "(the file in the run's temporary directory: the fsync costs what that disk costs), each point measured "
        "on one server right after the other. Predict: one character per request on primed sessions (wrk); "
        "latency = p50 / p99 of the requests. SSE: one streamed generation (curl); latency = time to first byte "
        "/ mean gap between tokens (one stream gives one of each). Ratios are durable / off.",
        "",
        *table(
            [
                "point",
                "throughput off",
                "throughput durable",
                "durable / off",
                "latency ms off",
                "latency ms durable",
                "latency durable / off",
            ],
            rows,
        ),
        "",
    ]
