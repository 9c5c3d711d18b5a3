"""The processes under test: each server is a real `python -m ...` on a free loopback port, as a user runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The environment without LSTM_SERVE_* settings, so only the flags the bench passes apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}


@dataclass
class ServerSpec:
    """How to start one server: a module run with `python -m` and its flags (`--port` is added)."""

    name: str
    module: str
    args: list[str]
    ready_path: str = "/readyz"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--host", HOST, "--port", str(port)]

    def shown(self) -> str:
        """The command as a person would type it (the port is picked at run time)."""
        return " ".join(["python", "-m", self.module, *self.args, "--port", "PORT"])


def product(
    model: Path, *, max_batch_size: int, max_sessions: int, provider: str = "cpu", extra: Sequence[str] = ()
) -> list[str]:
    """Flags of the product server under test: room for every session and for the re-send texts."""
    return [
        "--model-path",
        str(model),
        "--provider",
        provider,
        "--max-batch-size",
        str(max_batch_size),
        "--max-sessions",
        str(max_sessions),
        "--max-text-length",
        "200000",
        "--max-request-bytes",
        str(4 * 1_048_576),
        "--max-generate-tokens",
        "100000",  # the stream points are time-boxed by the client, not by the generation's length
        *extra,
    ]


@dataclass
class Server:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.spec.name} server exited ({self.proc.returncode}):\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.spec.ready_path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.spec.name} server not ready in {timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's whole process group, SIGKILL after 15 s; then SIGKILL to whatever of the group
        is left. A server's own children (LitServe's worker processes) would otherwise outlive it, spinning on
        their queues and taking CPU from every later measurement."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _signal_group(self.proc.pid, signal.SIGKILL)
        self._log.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start(spec: ServerSpec, log_dir: Path) -> Server:
    """Start a server (not yet waiting for it: several start in parallel, then `wait_ready` each)."""
    port = free_port()
    log_path = log_dir / f"{spec.name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        spec.command(port),
        cwd=ROOT,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: `stop` ends its children with it
    )
    return Server(spec, port, proc, log_path, log)


class LoadProcess:
    """The separate load process (service/bench/load.py): one JSON job in, one JSON result out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.bench.load"],
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load process exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
