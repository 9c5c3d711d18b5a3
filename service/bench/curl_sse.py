"""SSE streams driven by curl (`--parallel`): N streaming generations at once, one per session, from C.

A config file (`-K`) holds N POST requests with `"stream": true`, each writing its events to its own file;
`--parallel-max N --parallel-immediate` opens the N connections at once. Every request asks for far more tokens
than the window allows and `--max-time` cuts it when the window ends, so the point is time-boxed like wrk's.
Tokens are counted from the files afterwards (one `"token"` key per token event), so counting costs nothing
while the clock runs; each transfer's time to first byte and total time come from `--write-out`.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 100_000  # the API's hard cap; the window ends every stream long before


def curl_path() -> str | None:
    return shutil.which("curl")


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config(urls: Sequence[str], bodies: Sequence[str], out_dir: Path, max_time_s: float) -> str:
    blocks = []
    for i, (url, body) in enumerate(zip(urls, bodies, strict=True)):
        blocks.append(
            "\n".join(
                [
                    f"url = {_quote(url)}",
                    f"output = {_quote(str(out_dir / f'{i}.sse'))}",
                    'header = "Content-Type: application/json"',
                    'header = "Accept: text/event-stream"',
                    f"data = {_quote(body)}",
                    f"max-time = {max_time_s:.3f}",
                    'write-out = "%{time_starttransfer} %{time_total} %{http_code}\\n"',
                ]
            )
        )
    return "\nnext\n".join(blocks) + "\n"


def count(raw: bytes) -> tuple[int, int]:
    """(token events, error events) in one stream's bytes."""
    return raw.count(b'"token"'), raw.count(b'"error"')


def _summary_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(a.mean()), "max": float(a.max()), "n": len(a)}


def run(
    host: str, port: int, session_ids: Sequence[str], duration_s: float, seed: int, temperature: float = 0.8
) -> dict[str, Any]:
    """len(session_ids) concurrent streams for `duration_s`: tokens/s, time to first byte, per-stream rates."""
    exe = curl_path()
    if exe is None:
        raise RuntimeError("curl is not installed")
    n = len(session_ids)
    urls = [f"http://{host}:{port}/v1/sessions/{sid}/generate" for sid in session_ids]
    bodies = [
        json.dumps({"max_tokens": MAX_TOKENS, "temperature": temperature, "stream": True, "seed": seed * 7919 + i})
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="lstm-serve-curl-") as tmp:
        out_dir = Path(tmp)
        cfg = out_dir / "streams.cfg"
        cfg.write_text(config(urls, bodies, out_dir, duration_s))
        cmd = [exe, "-sS", "--parallel", "--parallel-immediate", "--parallel-max", str(n), "-K", str(cfg)]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 120)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        files = [out_dir / f"{i}.sse" for i in range(n)]
        counts = [count(f.read_bytes()) if f.exists() else (0, 0) for f in files]
    if done.returncode not in (0, 28):  # 28: the window's --max-time cut the transfers, as intended
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr[-500:]}")
    timings = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            timings.append((float(parts[0]), float(parts[1]), int(parts[2])))
    tokens = sum(c[0] for c in counts)
    errors = sum(c[1] for c in counts) + sum(1 for t in timings if t[2] != 200)
    ttfb = [t[0] * 1000 for t in timings if t[2] == 200]
    # Per stream: the mean gap between tokens once the stream has started.
    gaps = [
        (total - first) * 1000 / k
        for (first, total, code), (k, _) in zip(timings, counts, strict=False)
        if code == 200 and k > 1
    ]
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "kind": "stream",
        "concurrency": n,
        "client": "curl --parallel",
        "duration_s": wall,
        "completed": tokens,
        "errors": errors,
        "first_error": None if not errors else done.stderr[-300:] or "error events in the streams",
        "tokens_per_s": tokens / wall if wall else 0.0,
        "throughput": tokens / wall if wall else 0.0,
        "streams": len(timings),
        "tokens_per_stream": [c[0] for c in counts],
        "ttft_ms": _summary_ms(ttfb),
        "itl_ms": _summary_ms(gaps),
        "load_cpu_share": cpu / wall if wall else None,
        "curl_command": f"curl -sS --parallel --parallel-immediate --parallel-max {n} -K STREAMS.cfg "
        f"({n} POSTs, max-time {duration_s:g} s each)",
    }
