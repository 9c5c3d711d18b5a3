"""The report's PNG plots (matplotlib, headless): pictures a person would rather look at than read tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the bench runs in terminals and CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

LABELS = {
    "main": "lstm-serve (batching on)",
    "off": "batching off (max batch 1)",
    "noop": "no-op FastAPI route",
    "torch": "PyTorch eager baseline",
    "litserve": "LitServe + ORT + dict",
}
STYLE = {"main": "C0", "off": "C1", "noop": "C7", "torch": "C3", "litserve": "C4"}


def _xs(points: Sequence[dict[str, Any]], key: str = "concurrency") -> list[int]:
    return [int(p[key]) for p in points]


def _concurrency_axis(ax: Axes, xs: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(xs), [str(x) for x in xs])
    ax.grid(True, which="both", alpha=0.3)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_predict(predict: dict[str, Any], out: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs: list[int] = []
    for name, points in predict.items():
        points = [p for p in points if "throughput" in p]
        if not points:
            continue
        xs = sorted(set(xs) | set(_xs(points)))
        left.plot(_xs(points), [p["throughput"] for p in points], "o-", color=STYLE[name], label=LABELS[name])
        right.plot(
            _xs(points), [p["latency_ms"]["p50"] for p in points], "o-", color=STYLE[name], label=f"{LABELS[name]} p50"
        )
        right.plot(
            _xs(points), [p["latency_ms"]["p99"] for p in points], "x--", color=STYLE[name], label=f"{LABELS[name]} p99"
        )
    left.set(title="Session predict: throughput", xlabel="concurrent sessions", ylabel="requests / s")
    right.set(title="Session predict: latency", xlabel="concurrent sessions", ylabel="ms (log)", yscale="log")
    for ax in (left, right):
        _concurrency_axis(ax, xs)
    left.legend(fontsize=8)
    right.legend(fontsize=7, ncol=2)
    return _save(fig, out / "predict.png")


def plot_stream(stream: dict[str, Any], limit: dict[str, Any], out: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs: list[int] = []
    for name in ("noop", "main", "off"):
        points = [p for p in stream.get(name, []) if "tokens_per_s" in p]
        if not points:
            continue
        xs = sorted(set(xs) | set(_xs(points)))
        left.plot(_xs(points), [p["tokens_per_s"] for p in points], "o-", color=STYLE[name], label=LABELS[name])
        if name == "main":
            for key, stat, style, color, label in (
                ("ttft_ms", "p50", "o-", "C2", "TTFT p50"),
                ("itl_ms", "p50", "o-", STYLE[name], "inter-token p50"),
                ("itl_ms", "p99", "x--", STYLE[name], "inter-token p99"),
            ):
                # A point whose streams all outlasted the window has no latency figures.
                timed = [p for p in points if p[key].get(stat)]
                if timed:
                    right.plot(_xs(timed), [p[key][stat] for p in timed], style, color=color, label=label)
    both = limit.get("by_precision") or ({"": limit} if limit.get("batches") else {})
    for (name, lim), color in zip(both.items(), ("k", "C5", "C6"), strict=False):
        rows = [r for r in lim.get("batches", []) if not xs or r["batch"] <= max(xs)]
        if rows:
            served = " (served)" if name and name == limit.get("served") else ""
            left.plot(
                _xs(rows, "batch"),
                [r["tokens_per_s"] for r in rows],
                "s:",
                color=color,
                label=f"raw ONNX Runtime {name}{served} (batch = streams)",
            )
            xs = sorted(set(xs) | set(_xs(rows, "batch")))
    left.set(
        title="Streaming generation: aggregate tokens/s",
        xlabel="concurrent streams (batch)",
        ylabel="tokens / s (log)",
        yscale="log",
    )
    right.set(title="Streaming generation: latency (batching on)", xlabel="concurrent streams", ylabel="ms (log)")
    if right.lines:
        right.set_yscale("log")
    for ax in (left, right):
        _concurrency_axis(ax, xs or [1])
        ax.legend(fontsize=8)
    return _save(fig, out / "stream.png")


def plot_memory(memory: dict[str, Any], out: Path) -> str:
    points = memory["points"]
    ns = [p["sessions"] for p in points]
    mb = 1e6
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(ns, [p["rss_after"] / mb for p in points], "o-", label="process RSS (model loaded + store)")
    ax.plot(ns, [p["growth"] / mb for p in points], "o-", label="RSS growth from the sessions")
    ax.plot(ns, [p["raw_state"] / mb for p in points], "s:", color="k", label="raw state (layers x 2 x hidden x 4 B)")
    ax.plot(
        ns,
        [(1.5 * p["raw_state"] + 300 * mb) / mb for p in points],
        "--",
        color="C3",
        label="target: 1.5x raw + 300 MB",
    )
    ax.set(title="Memory against sessions", xlabel="sessions", ylabel="MB", xscale="log", yscale="log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "memory.png")


def plot_steps(steps: dict[str, Any], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = [r for r in steps.get("stateful", []) if r["latency_ms"]]
    ax.plot(
        [r["position"] for r in rows],
        [r["latency_ms"]["p50"] for r in rows],
        "o-",
        label="stateful session: one character (p50)",
    )
    resend = [r for r in steps.get("resend", []) if r["latency_ms"]]
    ax.plot(
        [r["length"] for r in resend],
        [r["latency_ms"]["p50"] for r in resend],
        "o-",
        color="C3",
        label="stateless re-send of the whole text (p50)",
    )
    extra = steps.get("resend_extrapolated", [])
    if resend and extra:
        ax.plot(
            [resend[-1]["length"], *(e["length"] for e in extra)],
            [resend[-1]["latency_ms"]["p50"], *(e["p50_ms"] for e in extra)],
            "x--",
            color="C3",
            label="re-send, extrapolated (linear)",
        )
    ax.set(
        title="Cost of the next character against session position",
        xlabel="position (characters so far)",
        ylabel="ms (log)",
        xscale="log",
        yscale="log",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "steps.png")


def write_plots(results: dict[str, Any], out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Every plot the results allow: (scenario -> file name, scenario -> why its plot failed)."""
    stream = results.get("stream", {})
    wanted: dict[str, Callable[[], str]] = {}
    if results.get("predict"):
        wanted["predict"] = lambda: plot_predict(results["predict"], out)
    if stream.get("main"):
        wanted["stream"] = lambda: plot_stream(stream, results.get("limit", {}), out)
    if results.get("memory", {}).get("points"):
        wanted["memory"] = lambda: plot_memory(results["memory"], out)
    if results.get("steps", {}).get("stateful"):
        wanted["steps"] = lambda: plot_steps(results["steps"], out)
    made, failed = {}, {}
    for name, draw in wanted.items():
        try:
            made[name] = draw()
        except Exception as exc:  # one bad plot must not cost the report of a ten-minute run
            plt.close("all")
            failed[name] = f"{type(exc).__name__}: {exc}"
    return made, failed
