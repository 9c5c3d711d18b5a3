"""The load generator: a separate process (`python -m service.bench.load`) that the runner feeds jobs.

One JSON job per stdin line, one JSON result per stdout line, so a single long-lived process runs every load
point (no interpreter start per point) while staying off the server's process. Every loop is bounded and
seeded: each simulated user is one keep-alive connection running a closed loop (next request when the last
answer is in) until the measuring window ends or it has made `max_requests`; the characters it sends come from
`random.Random(seed + user)`, so a rerun sends the same requests.

Jobs (`kind`):
- predict: each user creates a session (primed with `prefix`) and feeds it one character per request; the no-op
  and PyTorch baseline apps answer the same paths, so one job drives all three.
- resend: the stateless baseline, each user POSTs its whole growing text to /v1/predict every time.
- stream: each user creates a session and runs streaming generations (SSE) back to back.
- steps: step cost against session position, and the stateless re-send at growing lengths (one user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.bench.http import Connection, HttpError, HttpxConnection, open_connection
from service.client import SSEDecoder


class EndpointMissing(RuntimeError):
    """The server has no such route (404/405 before any event): the scenario is reported as not run."""


class WindowClosed(Exception):
    """A stream still running when the window closed is dropped: with batching off and hundreds of streams, one
    generation can outlast the window many times over, and the point must stay bounded in time."""


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds of a list of durations in seconds."""
    if not seconds:
        return {}
    a = np.asarray(seconds) * 1000.0
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(a.mean()), "max": float(a.max()), "n": len(seconds)}


@dataclass
class Window:
    """The measuring window: what started inside it is timed; what finished inside it counts for throughput."""

    start: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    first_error: str | None = None

    def record(self, t0: float, t1: float) -> None:
        if t0 >= self.start:
            self.latencies.append(t1 - t0)
        if self.start <= t1 <= self.end:
            self.completed += 1

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"


@dataclass
class StreamStats:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    tokens_in_window: int = 0
    streams: int = 0


class User:
    """One simulated user: a connection, a seeded RNG, and (for session jobs) its session id."""

    def __init__(self, job: dict[str, Any], index: int) -> None:
        self.job = job
        self.rng = random.Random(job["seed"] * 1_000_003 + index)
        self.alphabet: str = job["alphabet"]
        self.index = index
        self.conn: Connection | HttpxConnection | None = None
        self.session: str | None = None
        self.text: str = job.get("prefix", "")
        self.generations = 0
        self.cut = False  # a stream was dropped mid-response when the window closed

    async def setup(self) -> None:
        self.conn = await open_connection(self.job["host"], self.job["port"], self.job.get("client", "raw"))
        if self.job["kind"] in ("predict", "stream"):
            body = {"text": self.text} if self.text else {}
            self.session = (await self.conn.json("POST", "/v1/sessions", body))["session_id"]

    async def teardown(self, reconnect: bool = False) -> None:
        if self.conn is None:
            return
        if reconnect:  # the old connection is in the middle of a response
            await self.conn.close()
            self.conn = await open_connection(self.job["host"], self.job["port"], self.job.get("client", "raw"))
        if self.session is not None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await self.conn.request("DELETE", f"/v1/sessions/{self.session}")
        await self.conn.close()

    def char(self) -> str:
        return self.rng.choice(self.alphabet)

    async def predict(self) -> None:
        assert self.conn is not None
        await self.conn.json("POST", f"/v1/sessions/{self.session}/predict", {"text": self.char()})

    async def resend(self) -> None:
        assert self.conn is not None
        self.text += self.char()
        await self.conn.json("POST", "/v1/predict", {"text": self.text})

    async def generate(self, window: Window, stats: StreamStats) -> None:
        assert self.conn is not None
        self.generations += 1
        body = {
            "max_tokens": self.job["max_tokens"],
            "temperature": 0.8,
            "stream": True,
            "seed": self.job["seed"] * 7919 + self.index * 100_003 + self.generations,
        }
        t0 = time.perf_counter()
        assert isinstance(self.conn, Connection)  # streams use the raw client only
        status, pieces = await self.conn.stream(f"/v1/sessions/{self.session}/generate", body)
        if status in (404, 405):
            raw = b"".join([p async for p in pieces])
            if b"session" not in raw:  # a missing route, not a missing session
                raise EndpointMissing(f"POST /v1/sessions/{{id}}/generate answered {status}")
            raise HttpError(status, raw)
        if status != 200:
            raise HttpError(status, b"".join([p async for p in pieces]))
        decoder = SSEDecoder()
        last = t0
        timed = t0 >= window.start
        async for piece in pieces:
            now = time.perf_counter()
            if now > window.end:
                raise WindowClosed()
            for event in decoder.feed(piece):
                if event.data == "[DONE]":
                    continue
                body = orjson.loads(event.data)
                if "error" in body:
                    raise HttpError(200, event.data.encode())
                if "token" not in body:
                    continue  # the final event (finish_reason, text)
                if timed:
                    (stats.ttft if last == t0 else stats.gaps).append(now - last)
                if window.start <= now <= window.end:
                    stats.tokens_in_window += 1
                last = now
        stats.streams += 1


async def run_closed_loop(
    users: list[User], op: Callable[[User], Awaitable[None]], job: dict[str, Any], window: Window
) -> None:
    """Every user loops `op` until the window ends (or max_requests); the window opens after a warm-up."""

    async def loop(user: User) -> None:
        made = 0
        while made < job["max_requests"]:
            t0 = time.perf_counter()
            if t0 >= window.end:
                return
            try:
                await op(user)
            except WindowClosed:
                user.cut = True
                return
            except EndpointMissing:
                raise
            except Exception as exc:  # counted and reported; one failure must not stop the point
                window.error(exc)
                if window.errors > 100 + window.completed:  # failing throughout: give up on this point
                    raise
                continue
            window.record(t0, time.perf_counter())
            made += 1

    now = time.perf_counter()
    window.start = now + job["warmup_s"]
    window.end = window.start + job["duration_s"]
    await asyncio.gather(*(loop(u) for u in users))


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "steps":
        return await run_steps(job)
    users = [User(job, i) for i in range(job["concurrency"])]
    window = Window()
    stats = StreamStats()
    cpu0 = time.process_time()
    try:
        # Connections and sessions are made before the clock starts, a few at a time so none time out.
        setup = asyncio.Semaphore(32)

        async def set_up(u: User) -> None:
            async with setup:
                await u.setup()

        await asyncio.gather(*(set_up(u) for u in users))
        ops: dict[str, Callable[[User], Awaitable[None]]] = {
            "predict": User.predict,
            "resend": User.resend,
            "stream": lambda u: u.generate(window, stats),
        }
        await run_closed_loop(users, ops[kind], job, window)
    except EndpointMissing as exc:
        return {"kind": kind, "concurrency": job["concurrency"], "status": f"not run: endpoint missing ({exc})"}
    finally:
        await asyncio.gather(*(u.teardown(reconnect=u.cut) for u in users), return_exceptions=True)
    elapsed = window.end - window.start
    out: dict[str, Any] = {
        "kind": kind,
        "concurrency": job["concurrency"],
        "duration_s": elapsed,
        "completed": window.completed,
        "errors": window.errors,
        "first_error": window.first_error,
        "throughput": window.completed / elapsed,
        "latency_ms": summary_ms(window.latencies),
        "load_cpu_share": (time.process_time() - cpu0) / (elapsed + job["warmup_s"]),
    }
    if kind == "stream":
        out.update(
            tokens_per_s=stats.tokens_in_window / elapsed,
            streams=stats.streams,
            ttft_ms=summary_ms(stats.ttft),
            itl_ms=summary_ms(stats.gaps),
        )
    if kind == "resend":
        out["mean_text_length"] = float(np.mean([len(u.text) for u in users]))
    return out


async def run_steps(job: dict[str, Any]) -> dict[str, Any]:
    """Single-character step latency of sessions at several positions, measured round-robin so that drift on
    a shared machine hits every position alike; then the stateless re-send of whole texts of growing length."""
    user = User(job, 0)
    conn = await Connection.open(job["host"], job["port"])
    rng = random.Random(job["seed"])
    alphabet: str = job["alphabet"]
    sessions: dict[int, str] = {}
    try:
        feed_s: dict[int, float] = {}
        for position in job["positions"]:
            sid = (await conn.json("POST", "/v1/sessions", {}))["session_id"]
            t0 = time.perf_counter()
            left = position
            while left > 0:  # big pieces: reaching position 100,000 takes 100 requests, not 100,000
                n = min(left, job["chunk"])
                await conn.json(
                    "POST", f"/v1/sessions/{sid}/predict", {"text": "".join(rng.choice(alphabet) for _ in range(n))}
                )
                left -= n
            feed_s[position] = time.perf_counter() - t0
            sessions[position] = sid
        lat: dict[int, list[float]] = {p: [] for p in sessions}
        for _ in range(job["rounds"]):
            for position, sid in sessions.items():
                t0 = time.perf_counter()
                await conn.json("POST", f"/v1/sessions/{sid}/predict", {"text": user.char()})
                lat[position].append(time.perf_counter() - t0)
        resend: dict[int, list[float]] = {n: [] for n in job["resend_lengths"]}
        for n in job["resend_lengths"]:
            text = "".join(rng.choice(alphabet) for _ in range(n))
            for _ in range(max(2, job["resend_rounds"] if n <= 1000 else job["resend_rounds"] // 10)):
                t0 = time.perf_counter()
                await conn.json("POST", "/v1/predict", {"text": text})
                resend[n].append(time.perf_counter() - t0)
        return {
            "kind": "steps",
            "stateful": [{"position": p, "feed_s": feed_s[p], "latency_ms": summary_ms(v)} for p, v in lat.items()],
            "resend": [{"length": n, "latency_ms": summary_ms(v)} for n, v in resend.items()],
        }
    finally:
        for sid in sessions.values():
            await conn.request("DELETE", f"/v1/sessions/{sid}")
        await conn.close()


def _runner() -> asyncio.Runner:
    try:
        import uvloop  # the same loop the servers run on; it also makes the client leaner

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            with _runner() as runner:
                result = runner.run(run_job(job))
        except Exception as exc:  # reported to the runner, which records the point as failed
            result = {
                "kind": job.get("kind"),
                "concurrency": job.get("concurrency"),
                "status": f"failed: {type(exc).__name__}: {exc}",
            }
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
