"""Soak: hundreds of sessions against one real server process, each doing a seeded random mix of predict,
generate (streamed and not), fork, export/restore and delete, all at once, for a bounded time.

What a long run would reveal that the unit tests cannot: an error that only shows under sustained concurrency,
sessions that leak (the store fills up and never empties), memory that creeps up request by request, and what the
latency tail looks like. Every answer is checked against the worker's own model of its sessions (positions,
exported states), so a request served for the wrong session or applied twice counts as an error too.

The short form (about 18 s) runs in the suite; the long form (5 minutes) runs with LSTM_SERVE_SLOW=1. Set
LSTM_SERVE_SOAK_REPORT to a file path to get the figures as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.client import AsyncClient, AsyncSession, LstmServeError
from tests.e2e.process import ServerProcess
from tests.factories import TEST_VOCAB

pytestmark = pytest.mark.e2e

SESSIONS = 200  # concurrent workers, one live session each at least
MAX_OWNED = 4  # sessions one worker holds at most (its own plus forks and restores)
MAX_OPS = 100_000  # per worker: the time bound ends a run long before this
MAX_ERRORS = 10  # per worker: a broken server ends the run instead of flooding the report
SEED = 20_240_601
MEMORY_GROWTH_LIMIT = 0.05
ALPHABET = TEST_VOCAB.replace("\n", "")
# Operation mix: weights of a seeded random choice.
MIX = {"predict": 35, "stale": 4, "generate": 12, "stream": 12, "fork": 9, "restore": 9, "info": 5, "delete": 14}


@dataclass(frozen=True)
class SoakPlan:
    """How long a run lasts; the warm-up is excluded from the memory comparison (pools and caches fill then)."""

    warmup_s: float
    measured_s: float


SHORT = SoakPlan(warmup_s=6.0, measured_s=12.0)
LONG = SoakPlan(warmup_s=30.0, measured_s=270.0)


@dataclass
class Tally:
    """Every request's latency by operation, the errors the soak provoked on purpose, and anything else."""

    latency: dict[str, list[float]] = field(default_factory=dict)
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def record(self, op: str, seconds: float) -> None:
        self.latency.setdefault(op, []).append(seconds)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latency.values())


@dataclass
class Owned:
    """A session a worker holds, and the position it must be at (the worker's model of the server)."""

    session: AsyncSession
    position: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): the value q% of requests were at or under."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Worker:
    """One simulated client: a seeded random walk over its sessions, checking every answer."""

    def __init__(self, index: int, client: AsyncClient, tally: Tally, deadline: float) -> None:
        self.index = index
        self.client = client
        self.tally = tally
        self.deadline = deadline
        self.rng = random.Random(SEED + index)
        self.owned: list[Owned] = []

    async def timed(self, op: str, call: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.tally.record(op, time.perf_counter() - t0)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.tally.unexpected.append(f"worker {self.index}: {what}")

    def text(self, longest: int = 24) -> str:
        return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(1, longest)))

    async def run(self) -> None:
        """Bounded by count and by time; an error is recorded and the walk goes on, up to MAX_ERRORS of them."""
        ops, weights = list(MIX), list(MIX.values())
        errors = 0
        for _ in range(MAX_OPS):
            if time.monotonic() >= self.deadline or errors >= MAX_ERRORS:
                break
            op = self.rng.choices(ops, weights)[0] if self.owned else "create"
            try:
                await getattr(self, op)()
            except (LstmServeError, httpx.HTTPError, AssertionError) as exc:
                errors += 1
                self.tally.unexpected.append(f"worker {self.index} {op}: {type(exc).__name__}: {exc}")

    async def create(self) -> None:
        text = self.text() if self.rng.random() < 0.5 else None
        session = await self.timed("create", self.client.create_session(text=text))
        self.check(session.position == len(text or ""), f"created at {session.position}")
        self.owned.append(Owned(session, session.position))

    def pick(self) -> Owned:
        return self.rng.choice(self.owned)

    async def predict(self) -> None:
        one, text = self.pick(), self.text()
        expected = one.position if self.rng.random() < 0.5 else None
        got = await self.timed("predict", one.session.predict(text, top_k=3, expected_position=expected))
        one.position += len(text)
        self.check(got.position == one.position and len(got.next) == 3, f"predict at {got.position}")

    async def stale(self) -> None:
        """A conditional step from a position the session is not at: 409, nothing changed (an expected error)."""
        one = self.pick()
        try:
            await self.timed("predict", one.session.predict("a", expected_position=one.position + 1))
        except LstmServeError as exc:
            self.check(
                exc.code == "position_conflict" and exc.details.get("position") == one.position,
                f"stale step answered {exc}",
            )
            self.tally.expected["409 position_conflict"] += 1
            return
        self.check(False, "a stale step was applied")

    async def generate(self) -> None:
        one, n = self.pick(), self.rng.randint(1, 16)
        got = await self.timed(
            "generate", one.session.generate(max_tokens=n, temperature=0.8, seed=self.rng.randrange(2**31))
        )
        one.position += n
        self.check(got.position == one.position and len(got.tokens) == n, f"generate at {got.position}")

    async def stream(self) -> None:
        one, n = self.pick(), self.rng.randint(1, 16)
        events = one.session.stream(max_tokens=n, temperature=0.8, seed=self.rng.randrange(2**31))
        async with events:
            got = await self.timed("stream", events.collect())
        one.position += n
        self.check(got.position == one.position and got.finish_reason == "length", f"stream at {got.position}")

    async def make_room(self) -> None:
        while len(self.owned) >= MAX_OWNED:
            await self.delete()

    async def fork(self) -> None:
        await self.make_room()
        one = self.pick()
        child = await self.timed("fork", one.session.fork())
        self.check(child.position == one.position, f"fork at {child.position}, parent at {one.position}")
        self.owned.append(Owned(child, one.position))

    async def restore(self) -> None:
        """Export a session's state and restore it as a new session: both then predict the same next tokens."""
        await self.make_room()
        one = self.pick()
        state = await self.timed("export", one.session.export_state())
        self.check(state["position"] == one.position, f"exported at {state['position']}")
        copy = await self.timed("create", self.client.create_session(state=state))
        self.owned.append(Owned(copy, one.position))
        text = self.text(4)
        a = await self.timed("predict", one.session.predict(text, top_k=3))
        b = await self.timed("predict", copy.predict(text, top_k=3))
        one.position += len(text)
        self.owned[-1].position += len(text)
        self.check([t.id for t in a.next] == [t.id for t in b.next], "a restored state predicts differently")

    async def info(self) -> None:
        one = self.pick()
        got = await self.timed("info", one.session.info())
        self.check(got.position == one.position, f"info at {got.position}, expected {one.position}")

    async def delete(self) -> None:
        """Delete a session, then use it once: 404 session_not_found (an expected error)."""
        one = self.owned.pop(self.rng.randrange(len(self.owned)))
        await self.timed("delete", one.session.delete())
        try:
            await self.timed("info", one.session.info())
        except LstmServeError as exc:
            self.check(exc.status == 404 and exc.code == "session_not_found", f"deleted session answered {exc}")
            self.tally.expected["404 session_not_found"] += 1
            return
        self.check(False, "a deleted session still answers")

    async def close(self) -> None:
        for one in self.owned:
            try:
                await self.timed("delete", one.session.delete())
            except (LstmServeError, httpx.HTTPError) as exc:
                self.tally.unexpected.append(f"worker {self.index} final delete: {exc}")
        self.owned.clear()


class MemoryProbe:
    """The server's resident memory, sampled every half second (bounded: the run's length decides)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.samples.append((time.monotonic(), rss))
        return rss

    async def watch(self, until: float) -> None:
        while time.monotonic() < until:
            self.sample()
            await asyncio.sleep(0.5)


@pytest.fixture
def soak_server(tiny_model_path: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """One real server, room for every soak session, default batching; killed at the end whatever happened."""
    server = ServerProcess(
        tiny_model_path, tmp_path, "soak", env={"LSTM_SERVE_MAX_SESSIONS": str(SESSIONS * MAX_OWNED * 2)}
    ).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def cpu_seconds(process: psutil.Process, before: Any) -> float:
    """CPU time (user + system) a process used since `before`: who was the bottleneck, the server or the soak."""
    now = process.cpu_times()
    return float(now.user - before.user + now.system - before.system)


async def active_sessions(client: httpx.AsyncClient) -> tuple[int, float]:
    """Sessions held, as GET /v1/model and the Prometheus gauge each report them."""
    model = (await client.get("/v1/model")).json()
    metrics = (await client.get("/metrics")).text
    gauge = re.search(r"^lstm_serve_active_sessions (\S+)$", metrics, re.MULTILINE)
    assert gauge is not None, "no active_sessions gauge in /metrics"
    return int(model["sessions"]["active"]), float(gauge.group(1))


def worker_client(server: ServerProcess, tls: ssl.SSLContext) -> AsyncClient:
    """One client (one small connection pool) per worker, as for independent users: httpcore's pool does work
    in proportion to its connections on every request, so one pool for 200 workers made the soak its own
    bottleneck (measured: 10 ms of client CPU a request). One TLS context for all: building one costs ~50 ms."""
    transport = httpx.AsyncHTTPTransport(verify=tls, limits=httpx.Limits(max_connections=2))
    return AsyncClient(server.base_url, timeout=60, transport=transport)


async def run_soak(server: ServerProcess, plan: SoakPlan) -> dict[str, Any]:
    """Warm up, measure, delete everything; the figures of the run."""
    assert server.proc is not None
    tally, probe, tls = Tally(), MemoryProbe(server.proc.pid), ssl.create_default_context()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(worker_client(server, tls)) for _ in range(SESSIONS)]
        start = time.monotonic()
        warm_end, end = start + plan.warmup_s, start + plan.warmup_s + plan.measured_s
        cpu_server, cpu_client = probe.process.cpu_times(), psutil.Process().cpu_times()
        workers = [Worker(i, c, tally, end) for i, c in enumerate(clients)]
        running = asyncio.gather(*(w.run() for w in workers))
        await probe.watch(warm_end)
        rss_warm = probe.sample()
        await probe.watch(end)
        await asyncio.wait_for(running, timeout=120)  # each worker stops at `end`, after its current operation
        rss_end = probe.sample()
        await asyncio.gather(*(w.close() for w in workers))
        elapsed = time.monotonic() - start
        server_cpu, client_cpu = cpu_seconds(probe.process, cpu_server), cpu_seconds(psutil.Process(), cpu_client)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as plain:
        active, gauge = await active_sessions(plain)
    every = [s for values in tally.latency.values() for s in values]
    return {
        "sessions": SESSIONS,
        "seconds": round(elapsed, 1),
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / elapsed, 1),
        "unexpected_errors": len(tally.unexpected),
        "unexpected_sample": tally.unexpected[:10],
        "expected_errors": dict(tally.expected),
        "p50_ms": round(percentile(every, 50) * 1000, 1),
        "p99_ms": round(percentile(every, 99) * 1000, 1),
        "p99_ms_by_op": {op: round(percentile(v, 99) * 1000, 1) for op, v in sorted(tally.latency.items())},
        "requests_by_op": {op: len(v) for op, v in sorted(tally.latency.items())},
        "rss_warm_mb": round(rss_warm / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4),
        "active_after": active,
        "gauge_after": gauge,
        "server_cpu_s": round(server_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def report(figures: dict[str, Any]) -> None:
    """Print the figures (pytest -s shows them) and write them where LSTM_SERVE_SOAK_REPORT says, if it does."""
    print("soak:", json.dumps(figures, indent=2))
    target = os.environ.get("LSTM_SERVE_SOAK_REPORT")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2) + "\n")


def check(figures: dict[str, Any], server: ServerProcess) -> None:
    assert figures["unexpected_errors"] == 0, figures["unexpected_sample"]
    assert figures["expected_errors"], "the soak provoked no 404/409 at all: the mix did not run"
    assert figures["active_after"] == 0 and figures["gauge_after"] == 0, "sessions leaked"
    assert figures["rss_growth"] < MEMORY_GROWTH_LIMIT, f"resident memory grew {figures['rss_growth']:.1%}"
    bad = [e for e in server.logs() if e.get("msg") == "unhandled error" or e.get("status", 0) >= 500]
    assert not bad, bad[:3]
    assert server.alive


def soak(server: ServerProcess, plan: SoakPlan) -> None:
    figures = asyncio.run(run_soak(server, plan))
    report(figures)
    check(figures, server)


def test_soak_short(soak_server: ServerProcess) -> None:
    soak(soak_server, SHORT)


@pytest.mark.slow
@pytest.mark.timeout(LONG.warmup_s + LONG.measured_s + 300)
def test_soak_long(soak_server: ServerProcess) -> None:
    soak(soak_server, LONG)
