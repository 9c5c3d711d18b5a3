"""What every scenario shares: the plan, the servers under test, the load process, and one `point` call that
runs a load job against a server while measuring the server's own CPU use.

Predict points are driven by wrk and stream points by curl (C clients: the client's own cost stays a small
share of the 2 cores); the Python load process (service/bench/load.py) drives the rest (re-send, steps), and
predict or stream too where wrk or curl is missing, or when a point asks for it (`driver="python"`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from model.onnx_meta import ModelMetadata
from service.bench import curl_sse, sessions, wrk
from service.bench.plan import Plan
from service.bench.servers import HOST, LoadProcess, Server

# Text the sessions start from and the characters users type, kept to what the model's vocabulary has.
PREFIX = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n"
)
TYPED = "etaoinshrdlucmfwypvbgk ETAOINSHRD,.;:!?\n"


@dataclass
class Target:
    """A server the load drives: started by the bench (pid known) or given by URL."""

    name: str
    host: str
    port: int
    pid: int | None = None

    @classmethod
    def of(cls, server: Server) -> Target:
        return cls(server.spec.name, HOST, server.port, server.pid)


@dataclass
class Context:
    plan: Plan
    model: Path
    meta: ModelMetadata
    out: Path
    seed: int
    load: LoadProcess
    precision: str = "fp32"  # of the served artifact (`model`)
    artifacts: dict[str, Path] = field(default_factory=dict)  # precision -> file, every one bundled
    targets: dict[str, Target] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # server name -> the command that started it

    @property
    def alphabet(self) -> str:
        chars = set(self.meta.tokenizer.chars)
        return "".join(ch for ch in TYPED if ch in chars) or self.meta.tokenizer.chars[0]

    @property
    def prefix(self) -> str:
        chars = set(self.meta.tokenizer.chars)
        text = "".join(ch for ch in PREFIX if ch in chars) or self.alphabet
        return (text * (1 + self.plan.prefix_chars // len(text)))[: self.plan.prefix_chars]

    def limit_now(self, batch: int) -> dict[str, float]:
        """The raw ONNX Runtime step at `batch`, measured now, right next to the load point it is compared with
        (the machine's load drifts over a run; scenario 1's table is taken minutes earlier)."""
        from service.bench.limit import cpu_limit

        result = cpu_limit(self.model, (batch,), self.plan.limit_budget_s / 2, prompt_chars=0)
        return dict(result["batches"][0])

    def has(self, name: str) -> bool:
        return name in self.targets

    def job(self, kind: str, target: str, concurrency: int = 1, **extra: Any) -> dict[str, Any]:
        t = self.targets[target]
        p = self.plan
        return {
            "kind": kind,
            "host": t.host,
            "port": t.port,
            "concurrency": concurrency,
            "seed": self.seed,
            "warmup_s": p.warmup_s,
            "duration_s": p.duration_s,
            "max_requests": p.max_requests,
            "alphabet": self.alphabet,
            "prefix": self.prefix,
            "max_tokens": p.stream_tokens,
            **extra,
        }

    def driver(self, kind: str, driver: str | None = None) -> str:
        """Which client drives a point of this kind: wrk, curl, or the Python load process."""
        if driver == "python":
            return "python"
        if kind == "predict" and wrk.wrk_path() is not None:
            return "wrk"
        if kind == "stream" and curl_sse.curl_path() is not None:
            return "curl"
        return "python"

    def _wrk_point(self, target: str, concurrency: int) -> dict[str, Any]:
        t, p = self.targets[target], self.plan
        ids = sessions.create(t.host, t.port, target, concurrency, self.prefix, tag=f"c{concurrency}-")
        try:
            conns = [
                wrk.Conn(
                    sessions.predict_path(target, sid),
                    wrk.bodies(
                        self.alphabet,
                        self.seed,
                        i,
                        session_id=sid if sessions.style(target) == sessions.LITSERVE else None,
                    ),
                )
                for i, sid in enumerate(ids)
            ]
            if p.warmup_s >= 1:
                wrk.run(t.host, t.port, conns, p.warmup_s)
            return wrk.summary(wrk.run(t.host, t.port, conns, p.duration_s), concurrency)
        finally:
            sessions.delete(t.host, t.port, target, ids)

    def _curl_point(self, target: str, concurrency: int) -> dict[str, Any]:
        t = self.targets[target]
        ids = sessions.create(t.host, t.port, target, concurrency, self.prefix)
        try:
            return curl_sse.run(t.host, t.port, ids, self.plan.duration_s, self.seed)
        finally:
            time.sleep(0.2)  # the server cancels the streams the window cut; let it before the deletes
            sessions.delete(t.host, t.port, target, ids)

    def point(self, kind: str, target: str, concurrency: int = 1, **extra: Any) -> dict[str, Any]:
        """Run one load job against `target`; the result carries the server's CPU use over the job (in cores)
        and, from the product's own /metrics, what its batches looked like inside."""
        t = self.targets[target]
        proc = psutil.Process(t.pid) if t.pid is not None else None
        cpu0 = _tree_cpu(proc) if proc is not None else 0.0
        before = scrape(t)
        t0 = time.perf_counter()
        driver = self.driver(kind, extra.pop("driver", None))
        try:
            if driver == "wrk":
                result = self._wrk_point(target, concurrency)
            elif driver == "curl":
                result = self._curl_point(target, concurrency)
            else:
                result = self.load.run(self.job(kind, target, concurrency, **extra))
                result["client"] = "python (service/bench/load.py)"
        except (RuntimeError, httpx.HTTPError, OSError) as exc:
            result = {"kind": kind, "concurrency": concurrency, "status": f"failed: {type(exc).__name__}: {exc}"}
        if proc is not None:
            result["server_cpu_cores"] = (_tree_cpu(proc) - cpu0) / (time.perf_counter() - t0)
        after = scrape(t)
        if before and after:
            result["inside"] = inside(before, after)
        result["server"] = target
        return result


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a server and its child processes (LitServe runs its inference worker in a child)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


METRICS = ("inference_latency_seconds", "batch_size", "queue_wait_seconds")


def scrape(t: Target) -> dict[str, float]:
    """Sums and counts of the product's batching histograms (empty for servers without lstm-serve metrics)."""
    try:
        text = httpx.get(f"http://{t.host}:{t.port}/metrics", timeout=10.0).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("lstm_serve_") and name.endswith(("_sum", "_count", "_total")) and "{" not in name:
            values[name.removeprefix("lstm_serve_")] = float(value)
    return values


def inside(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-point means from metric deltas: ORT wall and CPU time per run, items per batch, queue wait."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    runs, batches, waits = (delta(f"{m}_count") for m in METRICS)
    out: dict[str, float] = {"batches": batches, "ort_runs": runs}
    if runs:
        out["ort_ms_per_run"] = delta("inference_latency_seconds_sum") / runs * 1000
        if "inference_cpu_seconds_total" in after:  # the thread's CPU in those runs; the rest of the wall was waiting
            out["ort_cpu_ms_per_run"] = delta("inference_cpu_seconds_total") / runs * 1000
    if batches:
        out["mean_batch"] = delta("batch_size_sum") / batches
    if waits:
        out["queue_wait_ms"] = delta("queue_wait_seconds_sum") / waits * 1000
    return out
