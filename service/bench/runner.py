"""`lstm-serve bench`: start the servers, run the scenarios, profile missed targets, write the report.

Order matters on a shared 2-core machine: servers start (in parallel) and become ready before anything is
timed; the raw ONNX Runtime limit is taken while they sit idle; then the load points run one at a time from
the separate load process, compared points next to each other.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.onnx_meta import ModelMetadata
from model.paths import BUNDLED_MODEL
from service.bench import plan as plans
from service.bench import profile, servers, targets
from service.bench.context import Context, Target
from service.bench.durable import scenario_durable
from service.bench.fairness import scenario_fairness
from service.bench.machine import commit, cpu_available, machine_info
from service.bench.optimise import scenario_optimisations
from service.bench.scenarios import (
    scenario_gpu,
    scenario_limit,
    scenario_memory,
    scenario_predict,
    scenario_resend,
    scenario_steps,
    scenario_stream,
)

SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "limit": scenario_limit,
    "predict": scenario_predict,
    "resend": scenario_resend,
    "stream": scenario_stream,
    "steps": scenario_steps,
    "memory": scenario_memory,
    "optimisations": scenario_optimisations,
    "gpu": scenario_gpu,
    "fairness": scenario_fairness,
    "durable": scenario_durable,
}
# The servers each scenario drives (the product server "main" may instead be given by --url).
NEEDS: dict[str, set[str]] = {
    "predict": {"main", "off", "noop", "litserve", "torch"},
    "resend": {"main"},
    "stream": {"main", "off", "noop"},
    "steps": {"main"},
    "optimisations": {"main", "h11", "quiet", "switch", "otel", "ungrouped", "pytopk", "noop"},
    "gpu": {"gpu"},
    "fairness": {"main", "unchunked"},
    "durable": {"main", "durable"},
}
DEFAULT_OUT = Path("docs/benchmarks")
SHORT_OUT = Path("build/bench-short")
SNAPSHOT_FILE = "durable-sessions.snapshot"  # the durable server's, in the run's temporary directory


def server_specs(
    model: Path, plan: plans.Plan, fp32: Path | None = None, state_dir: Path | None = None
) -> dict[str, servers.ServerSpec]:
    """`model`: the served artifact; `fp32`: its fp32 parent, for the PyTorch peer (which needs float weights);
    `state_dir`: where the durable server keeps its snapshot and journal (no durable server without it)."""
    sessions = 4 * max(plan.concurrencies) + 64  # every user's session, with room to spare
    main = servers.product(model, max_batch_size=max(plan.concurrencies), max_sessions=sessions)
    specs = {
        "main": servers.ServerSpec("main", "service", main),
        "off": servers.ServerSpec("off", "service", servers.product(model, max_batch_size=1, max_sessions=sessions)),
        "noop": servers.ServerSpec("noop", "service.bench.noop_app", []),
        "torch": servers.ServerSpec("torch", "service.bench.baselines", ["--model", str(fp32 or model)]),
        "litserve": servers.ServerSpec(
            "litserve", "service.bench.peer_litserve", ["--model", str(model)], ready_path="/health"
        ),
        "h11": servers.ServerSpec("h11", "service.bench.serve", ["--loop", "asyncio", "--http", "h11", *main]),
        "quiet": servers.ServerSpec("quiet", "service", [*main, "--log-level", "WARNING"]),
        "unchunked": servers.ServerSpec("unchunked", "service", [*main, "--prefill-chunk-tokens", "0"]),
        "switch": servers.ServerSpec("switch", "service", [*main, "--gil-switch-interval-ms", "5"]),
        "otel": servers.ServerSpec("otel", "service", [*main, "--opentelemetry"]),
        "ungrouped": servers.ServerSpec("ungrouped", "service", [*main, "--stream-group-tokens", "1"]),
        "pytopk": servers.ServerSpec("pytopk", "service", [*main, "--no-next-token-graph"]),
    }
    gpu = servers.product(model, max_batch_size=max(plan.concurrencies), max_sessions=sessions, provider="cuda")
    specs["gpu"] = servers.ServerSpec("gpu", "service", gpu)
    if state_dir is not None:
        durable = ["--durable", "--snapshot-path", str(state_dir / SNAPSHOT_FILE)]
        specs["durable"] = servers.ServerSpec("durable", "service", [*main, *durable])
    return specs


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _wanted_servers(selected: list[str], url: str | None, has_fp32: bool = True) -> set[str]:
    from service.bench.limit import gpu_status

    names = set().union(*(NEEDS.get(s, set()) for s in selected))
    if url is not None:
        names.discard("main")
    if gpu_status() is not None:
        names.discard("gpu")
    # Looked up, not imported: the bench imports torch only in the PyTorch peer's own process.
    if not _importable("torch") or not has_fp32:
        names.discard("torch")
    if not _importable("litserve"):
        names.discard("litserve")
    return names


def artifacts(model: Path) -> tuple[Path, str, dict[str, Path]]:
    """(the served artifact, its precision, every precision of this model found beside it).

    Given an fp32 file, the server is started on what `lstm-serve serve` would pick on the CPU provider with
    precision auto (int8 when its sibling qualifies, service/config.py); an int8 file is served as given."""
    from model.quantize import INT8, QUANTIZATION_KEY, int8_path, read_props, served_artifact

    if read_props(model).get(QUANTIZATION_KEY) == INT8:
        return model, "int8", {"int8": model}
    found = {"fp32": model}
    if int8_path(model).is_file():
        found["int8"] = int8_path(model)
    served = served_artifact("cpu", "auto", model)
    return served, ("int8" if served == found.get("int8") else "fp32"), found


def _artifact_info(found: dict[str, Path]) -> dict[str, Any]:
    from model.quantize import read_props

    out: dict[str, Any] = {}
    for name, path in found.items():
        props = read_props(path)
        loss = props.get("val_loss")
        out[name] = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "fingerprint": props.get("fingerprint"),
            "val_loss": float(loss) if loss else None,
        }
    return out


def command_line(args: argparse.Namespace) -> str:
    """The exact command, flags in a fixed order, defaults left out."""
    parts = ["lstm-serve", "bench"]
    if args.short:
        parts.append("--short")
    for flag in ("out", "model", "url", "only", "concurrency", "duration"):
        value = getattr(args, flag, None)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    if args.seed != 1234:
        parts += ["--seed", str(args.seed)]
    if args.no_profile:
        parts.append("--no-profile")
    return shlex.join(parts)


def make_plan(args: argparse.Namespace) -> plans.Plan:
    plan = plans.SHORT if args.short else plans.FULL
    changes: dict[str, Any] = {}
    if args.concurrency:
        cs = tuple(int(c) for c in args.concurrency.split(","))
        changes["concurrencies"] = cs
        changes["stream_concurrencies"] = cs
        changes["compare_at"] = plan.compare_at if plan.compare_at in cs else max(cs)
    if args.duration:
        changes["duration_s"] = float(args.duration)
    if changes:
        from dataclasses import replace

        plan = replace(plan, **changes)
    return plan


def run_profiles(ctx: Context, results: dict[str, Any], profile_dir: Path) -> None:
    """Profile the load point behind each missed target (once per distinct point) while it runs again."""
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    for t in results["targets"]:
        if t["met"] is not False or not t["profile"]:
            continue
        server, kind, c = t["profile"]
        key = (server, kind, int(c))
        if key not in done:
            target = ctx.targets.get(server)
            if target is None or target.pid is None:
                done[key] = {"status": "not profiled: the server was given by URL or not started"}
            else:
                profile_dir.mkdir(parents=True, exist_ok=True)
                out = profile_dir / f"{server}-{kind}-{c}.txt"
                spy = profile.start(target.pid, ctx.plan.profile_s + ctx.plan.warmup_s, out)
                point = ctx.point(kind, server, c)
                done[key] = {
                    "point": f"{kind} at {c} on {server}",
                    **profile.finish(spy, out),
                    "throughput_while_profiled": point.get("throughput"),
                }
        t["profile_result"] = done[key]


def bench(args: argparse.Namespace) -> int:
    from service.bench.report import write_report

    plan = make_plan(args)
    model, precision, found = artifacts(Path(args.model) if args.model else BUNDLED_MODEL)
    out = Path(args.out) if args.out else (SHORT_OUT if plan.short else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    selected = list(SCENARIOS) if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"lstm-serve bench: unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    import onnx

    meta = ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    )
    started = time.time()
    probe_s = 0.3 if plan.short else 1.0
    results: dict[str, Any] = {
        "meta": {
            "command": command_line(args),
            "commit": commit(servers.ROOT),
            "machine": machine_info(probe_s),
            "plan": plan.to_json(),
            "model": _model_info(model, meta),
            "precision": precision,
            "artifacts": _artifact_info(found),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seed": args.seed,
            "scenarios": selected,
        }
    }
    with tempfile.TemporaryDirectory(prefix="lstm-serve-bench-") as tmp:
        specs = server_specs(model, plan, found.get("fp32"), Path(tmp))
        running: list[servers.Server] = []
        load = servers.LoadProcess()
        ctx = Context(plan, model, meta, out, args.seed, load, precision=precision, artifacts=found)
        try:
            for name in sorted(_wanted_servers(selected, args.url, "fp32" in found)):
                running.append(servers.start(specs[name], Path(tmp)))
                ctx.commands[name] = specs[name].shown().replace(tmp, "$TMPDIR")  # nothing of this machine
            for server in running:
                server.wait_ready()
                ctx.targets[server.spec.name] = Target.of(server)
            if args.url:
                ctx.targets["main"] = _url_target(args.url)
                ctx.commands["main"] = f"(given by URL: {args.url})"
            results["meta"]["servers"] = ctx.commands
            for name in selected:
                print(f"bench: {name} ...", flush=True)
                t0 = time.perf_counter()
                results[name] = SCENARIOS[name](ctx)
                results[name + "_seconds"] = time.perf_counter() - t0
            results["targets"] = targets.evaluate(results, plan.compare_at)
            if not args.no_profile:
                run_profiles(ctx, results, out / "profiles")
        finally:
            load.close()
            for server in running:
                server.stop()
    results["meta"]["machine"]["cores_available_at_end"] = cpu_available(probe_s)
    results["meta"]["duration_s"] = time.time() - started
    results = portable(results)
    write_report(results, out)
    missed = [t["name"] for t in results["targets"] if t["met"] is False]
    print(
        f"bench: wrote {out}/results.json, {out}/README.md and plots in {results['meta']['duration_s']:.0f} s; "
        f"targets missed: {', '.join(missed) or 'none'}"
    )
    return 0


def portable(value: Any) -> Any:
    """The results with this checkout's own location taken out of every string (model paths, server commands),
    so that a committed report names paths relative to the repository and holds nothing of the machine."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(str(servers.ROOT) + "/", "")
    return value


def _model_info(path: Path, meta: ModelMetadata) -> dict[str, Any]:
    cfg = meta.config
    return {
        "path": str(path),
        "name": meta.name,
        "version": meta.version,
        "fingerprint": meta.fingerprint,
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "embed": cfg.embed_size,
        "vocab": cfg.vocab_size,
        "state_bytes": cfg.num_layers * 2 * cfg.hidden_size * 4,
    }


def _url_target(url: str) -> Target:
    import httpx

    parsed = httpx.URL(url)
    return Target("main", parsed.host, parsed.port or 80)
