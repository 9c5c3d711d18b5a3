"""The machine a run was taken on, for the report: absolute figures mean little without it."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psutil

from model.machine import cpu_model

PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "orjson",
    "torch",
    "litserve",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(probe_s: float = 1.0) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "providers": ort.get_available_providers(),
        "provider_used": "cpu",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cores_available_at_start": cpu_available(probe_s),
        "packages": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "clients": clients(),
    }


def _first_line(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def clients() -> str:
    """The C load clients and their versions (wrk prints its version in its usage text)."""
    wrk = _first_line(["wrk", "-v"])
    curl = _first_line(["curl", "--version"])
    return "; ".join(
        [
            " ".join(wrk.split()[:2]) if wrk else "wrk not installed (predict falls back to the Python client)",
            " ".join(curl.split()[:2]) if curl else "curl not installed (streams fall back to the Python client)",
        ]
    )


def commit(root: Path) -> str | None:
    """The checkout's commit, with `+changes` when tracked files under service/ or model/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "service", "model"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" +uncommitted changes under service/ or model/" if dirty.stdout.strip() else "")


SPIN = (
    "import json, time\nt = time.perf_counter(); c = time.process_time()\n"
    "while time.perf_counter() - t < {s}: pass\n"
    "print(json.dumps((time.process_time() - c) / (time.perf_counter() - t)))"
)


def cpu_available(seconds: float = 1.0) -> float:
    """Cores this run can actually get now: one spinning process per core, their CPU shares summed. On a machine
    shared with other work it says how much of it the benchmark had (2.0 = all of a 2-core machine)."""
    n = os.cpu_count() or 1
    procs = [
        subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    return round(sum(float(json.loads(p.communicate()[0])) for p in procs), 2)
