"""Where the time goes: py-spy attached to a server process while a load point runs, summarised to top frames.

py-spy samples every thread of the running server from outside (no change to it, `--nonblocking` so it is
not paused), which shows the event loop and the engine thread (batching and ONNX Runtime) side by side. Without
py-spy installed the report says so instead of a profile.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """Start sampling `pid` for `seconds` into `out` (collapsed stacks); None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--threads",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# Where a sample's time goes, by the innermost frame that belongs to a known component (checked in this order).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ONNX Runtime run", ("onnxruntime/",)),
    ("sampling and top-k", ("service/engine/sampling.py", "service/engine/topk.py")),
    ("state store", ("service/state/",)),
    ("engine and batcher", ("service/engine/",)),
    ("logging", ("logging/", "service/logging.py")),
    ("metrics", ("prometheus_client/", "service/metrics.py")),
    ("routes, schemas, middleware (service/api)", ("service/api/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("SSE (sse-starlette)", ("sse_starlette/",)),
    ("FastAPI and Starlette", ("fastapi/", "starlette/")),
    ("uvicorn and httptools", ("uvicorn/protocols/", "httptools/")),
    ("JSON (stdlib)", ("json/",)),
    ("NumPy", ("numpy/",)),
    ("worker-thread hand-off", ("concurrent/futures/", "threading.py")),
    ("event loop (uvloop/asyncio)", ("asyncio/", "uvloop/", "uvicorn/")),
)


def _split(frame: str) -> tuple[str, str]:
    """`function (path/to/file.py:123)` -> (`function (file.py)`, `path/to/file.py`)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0] if where else ""
    file = path.rsplit("/", 1)[-1]
    return (f"{name} ({file})" if file else name), path


def _component(paths: list[str]) -> str:
    for path in reversed(paths):  # innermost first
        for component, prefixes in COMPONENTS:
            if any(p in path for p in prefixes):
                return component
    return "other"


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    """Top frames by self time, time by component, and per-thread shares, each a share of all samples."""
    self_time: Counter[str] = Counter()
    components: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread, frames = (frames[0], frames[1:]) if frames[0].startswith(("thread", "process")) else ("", frames)
        if not frames:
            continue
        names, paths = zip(*(_split(f) for f in frames), strict=True)
        total += n
        threads[thread.split(": ", 1)[-1]] += n
        self_time[names[-1]] += n
        components[_component(list(paths))] += n
    if not total:
        return {"samples": 0}

    def share(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": k, "share": v / total} for k, v in c.most_common(top)]

    return {"samples": total, "self": share(self_time), "components": share(components), "threads": share(threads)}


def compact(path: Path) -> Path:
    """Drop line numbers, merge the stacks that become identical and gzip: a tenth of the size to commit, and
    still the collapsed-stack format flame graph tools read (`zcat FILE | flamegraph.pl`)."""
    merged: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            merged[re.sub(r":\d+\)", ")", stack)] += int(count)
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress("".join(f"{stack} {n}\n" for stack, n in merged.most_common()).encode()))
    path.unlink()
    return packed


def finish(proc: subprocess.Popen[bytes] | None, out: Path) -> dict[str, Any]:
    if proc is None:
        return {"status": "no profiler: install py-spy (pip install py-spy) to get profiles of missed targets"}
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not out.exists():
        return {"status": f"py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-300:]}"}
    summary = summarise(out)
    return {"status": "ok", "file": compact(out).name, **summary}
