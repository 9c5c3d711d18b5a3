"""results.json, the markdown report (README.md) and the plots, written into the output directory."""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any

from service.bench.explain import why
from service.bench.plots import write_plots
from service.bench.report_sections import (
    fmt,
    section_baselines,
    section_durable,
    section_fairness,
    section_gpu,
    section_limit,
    section_memory,
    section_optimisations,
    section_predict,
    section_steps,
    section_stream,
    table,
)


def _pct(share: Any) -> str:
    return "" if share is None else f"{float(share):.1%}"


def _verdict(t: dict[str, Any]) -> str:
    return {True: "met", False: "**missed**", None: "not evaluated"}[t["met"]]


def shortfall(t: dict[str, Any]) -> str:
    """By how much a missed target misses: the factor still to gain (or to shed) to reach its bound."""
    value, bound = t["value"], t["bound"]
    if t["met"] is not False or value is None:
        return ""
    if t.get("unit"):
        return f"{value - bound:+.4f}{t['unit']} over"
    if t["at_most"]:
        return f"{value / bound:.2f}x the bound ({value / bound - 1:.0%} over)"
    return f"{value / bound:.2f}x the bound (needs {bound / value:.2f}x more)"


def section_targets(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            t["goal"],
            (fmt(t["value"], 4) + t["unit"] if t.get("unit") else fmt(t["value"]) + "x")
            if t["value"] is not None
            else "n/a",
            ("<= " if t["at_most"] else ">= ") + (fmt(t["bound"], 4) + t["unit"] if t.get("unit") else fmt(t["bound"])),
            _verdict(t) + (f": {shortfall(t)}" if t["met"] is False else ""),
            t["detail"],
        ]
        for t in results.get("targets", [])
    ]
    meta = results["meta"]
    return [
        "## Targets",
        "",
        "Each figure is a ratio of two measurements taken in this run (the int8 loss: a difference of the two "
        "artifacts' recorded held-out losses). The limit of a figure is min(raw ONNX Runtime of the served "
        f"model at that batch size, the no-op floor for that kind of request); served model: "
        f"{meta.get('precision', 'fp32')}.",
        "",
        *table(["target", "measured", "bound", "verdict", "figures"], rows),
        "",
    ]


def section_machine(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    m, model = meta["machine"], meta["model"]
    load = m.get("load_average_at_start")
    lines = [
        "## Machine and command",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{m['memory_gb']} GiB; {m['os']}, Python {m['python']}",
        f"- Execution provider: {m['provider_used']} (available: {', '.join(m['providers'])})",
        f"- Load clients: {m.get('clients', 'n/a')}",
        *([f"- Code measured: commit `{meta['commit']}`"] if meta.get("commit") else []),
        f"- Load average at start: {', '.join(f'{x:.2f}' for x in load) if load else 'n/a'}; CPU the run could "
        f"get (one spinning process per core, shares summed): {m.get('cores_available_at_start')} cores at the "
        f"start, {m.get('cores_available_at_end')} at the end (the machine is shared: absolute figures drift "
        "between runs, ratios much less)",
        f"- Model: {model['name']} v{model['version']} ({model['layers']} layers, hidden {model['hidden']}, "
        f"vocabulary {model['vocab']}; {model['state_bytes']:,} bytes of state per session), "
        f"`{model['fingerprint'][:19]}...`",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Command: `{meta['command']}` (started {meta['started_at']}, took {meta['duration_s']:.0f} s)",
        "- Servers under test (each a separate process on a free loopback port):",
        *(f"  - {name}: `{cmd}`" for name, cmd in meta.get("servers", {}).items()),
        "",
    ]
    if meta["plan"]["short"]:
        lines[1:1] = ["", "**Short mode**: tiny counts to prove the benchmark works; these figures mean nothing.", ""]
    return lines


def section_missed(results: dict[str, Any]) -> list[str]:
    compare_at = results["meta"]["plan"]["compare_at"]
    missed = [t for t in results.get("targets", []) if t["met"] is False]
    if not missed:
        return []
    m = results["meta"]["machine"]
    lines = [
        "## Missed targets: why, and where the time goes",
        "",
        f"Context for every miss below: the server, the load process and the raw-limit probe share "
        f"{m['logical_cores']} cores with whatever else runs on the machine; this run could get "
        f"{m.get('cores_available_at_start')} cores at its start and {m.get('cores_available_at_end')} at its "
        "end. The server is one Python process: its event loop and its engine thread (batching and ONNX Runtime) "
        "together can use at most the cores the machine leaves it.",
        "",
    ]
    for t in missed:
        lines += [
            f"### {t['goal']}",
            "",
            f"Measured {fmt(t['value'])}x ({t['detail']}). {why(t, results, compare_at)}",
            "",
        ]
        prof = t.get("profile_result")
        if prof and prof.get("status") == "ok" and prof.get("samples"):
            lines += [
                f"py-spy profile of the server during {prof['point']} ({prof['samples']} samples, all "
                f"threads; raw stacks in `profiles/{prof['file']}`):",
                "",
            ]
            empty: dict[str, Any] = {"frame": "", "share": None}
            rows = [
                [f"`{s['frame']}`" if s["frame"] else "", _pct(s["share"]), str(c["frame"]), _pct(c["share"])]
                for s, c in zip_longest(prof["self"], prof["components"], fillvalue=empty)
            ]
            threads = ", ".join(f"{t['frame'] or 'all'} {t['share']:.0%}" for t in prof["threads"])
            lines += [f"Samples by thread: {threads}.", ""]
            lines += [*table(["self time (innermost frame)", "share", "time by component", "share"], rows), ""]
        elif prof:
            lines += [f"Profile: {prof.get('status', 'none')}.", ""]
    return lines


def render(results: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [
        "# lstm-serve benchmark",
        "",
        "Generated by `lstm-serve bench` (service/bench/); do not edit by hand, rerun it. Every server is a "
        "real process driven over loopback TCP by C clients (wrk for predict, curl --parallel for SSE streams; "
        "a Python load process for the re-send and step-cost figures), closed loops, bounded and seeded; the "
        "limit is raw ONNX Runtime in-process.",
        "",
    ]
    lines += section_targets(results) + section_machine(results)
    for section in (
        section_limit,
        section_predict,
        section_stream,
        section_baselines,
        section_memory,
        section_steps,
        section_gpu,
        section_optimisations,
        section_fairness,
        section_durable,
    ):
        lines += section(results, plots)
    lines += section_missed(results)
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # first: nothing after can lose it
    plots, failed = write_plots(results, out)
    results["plots"], results["plots_failed"] = plots, failed
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render(results, plots)
    if failed:
        report += "\n" + "\n".join(f"Plot of {name} failed: {why}" for name, why in failed.items()) + "\n"
    (out / "README.md").write_text(report)
