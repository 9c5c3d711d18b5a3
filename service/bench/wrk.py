"""Predict load driven by wrk (C, epoll), so the client costs a small fraction of what the server does.

One session per wrk connection: the sessions are created first (service/bench/sessions.py), written to a Lua
file as one entry per connection (the path to POST and a ring of pre-encoded JSON bodies, one character each),
and wrk runs one connection per thread (`-t N -c N`), each thread's `setup()` handing it its own entry. A
connection is a closed loop (next request when the answer is in), exactly as one user typing. The `done()` hook
prints the latency percentiles (µs, from wrk's own histogram) and the counts as one JSON line.

wrk has no warm-up of its own: a full run does a separate warm-up run first on the same sessions.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARK = "WRK_JSON "
PERCENTILES = (50, 90, 99, 99.9)

LUA = r"""
-- lstm-serve bench: one session per connection (-t N -c N: one connection per thread).
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end

function init(args)
  local mine = dofile(args[1])[index]
  local headers = {["Content-Type"] = "application/json"}
  ring = {}
  for i, body in ipairs(mine.bodies) do
    ring[i] = wrk.format("POST", mine.path, headers, body)
  end
  at = 0
end

function request()
  at = at % #ring + 1
  return ring[at]
end

function done(summary, latency, requests)
  local e = summary.errors
  local ps = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    ps[#ps + 1] = string.format('"%g": %d', q, latency:percentile(q))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "max": %d, "mean": %.3f, "stdev": %.3f, "percentiles": {%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(ps, ", ")))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass(frozen=True)
class Conn:
    """What one connection sends: its path and a ring of JSON bodies (its session is in one or the other)."""

    path: str
    bodies: Sequence[str]


def bodies(alphabet: str, seed: int, index: int, n: int = 64, session_id: str | None = None) -> list[str]:
    """n one-character predict bodies for connection `index`, seeded (a rerun sends the same characters)."""
    rng = random.Random(seed * 1_000_003 + index)
    head = {} if session_id is None else {"session_id": session_id}
    return [json.dumps({**head, "text": rng.choice(alphabet)}) for _ in range(n)]


def _lua_string(s: str) -> str:
    level = "=" * 3
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def write_conns(conns: Sequence[Conn], path: Path) -> None:
    entries = []
    for c in conns:
        ring = ", ".join(_lua_string(b) for b in c.bodies)
        entries.append(f"  {{path = {_lua_string(c.path)}, bodies = {{{ring}}}}},")
    path.write_text("return {\n" + "\n".join(entries) + "\n}\n")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(host: str, port: int, conns: Sequence[Conn], duration_s: float, timeout_s: float = 10.0) -> dict[str, Any]:
    """One wrk run of `duration_s` (whole seconds, at least 1) over `conns`: wrk's JSON, its CPU and wall time."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk; `make bench` installs it)")
    n = len(conns)
    with tempfile.TemporaryDirectory(prefix="lstm-serve-wrk-") as tmp:
        script, data = Path(tmp) / "predict.lua", Path(tmp) / "conns.lua"
        script.write_text(LUA)
        write_conns(conns, data)
        seconds = max(1, round(duration_s))
        cmd = [
            exe,
            "-t",
            str(n),
            "-c",
            str(n),
            "-d",
            f"{seconds}s",
            "--timeout",
            f"{max(1, round(timeout_s))}s",
            "--latency",
            "-s",
            str(script),
            f"http://{host}:{port}",
            "--",
            str(data),
        ]
        cpu0, t0 = _children_cpu(), time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARK)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    out: dict[str, Any] = json.loads(line[len(MARK) :])
    out["wall_s"] = wall
    out["cpu_s"] = cpu
    shown = [*cmd[1:-4], "predict.lua", "http://HOST:PORT", "--", "CONNS.lua"]  # no temporary paths or ports
    out["command"] = " ".join(["wrk", *shown])
    return out


def summary(raw: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """A wrk run in the load process's result shape (throughput, latency_ms with p50/p90/p99, counts)."""
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    pct = {float(k): v / 1000 for k, v in lat["percentiles"].items()}
    errors = raw["errors"]
    n_err = sum(errors.values())
    return {
        "kind": "predict",
        "concurrency": concurrency,
        "client": "wrk",
        "duration_s": seconds,
        "completed": raw["requests"],
        "errors": n_err,
        "error_counts": errors,
        "first_error": None if not n_err else f"wrk errors {errors}",
        "throughput": raw["requests"] / seconds if seconds else 0.0,
        "latency_ms": {
            "p50": pct[50.0],
            "p90": pct[90.0],
            "p99": pct[99.0],
            "p99.9": pct[99.9],
            "mean": lat["mean"] / 1000,
            "max": lat["max"] / 1000,
            "n": raw["requests"],
        },
        "load_cpu_share": raw["cpu_s"] / raw["wall_s"] if raw["wall_s"] else None,
        "wrk_command": raw["command"],
    }
