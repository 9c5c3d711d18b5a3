"""A real server process for the end-to-end tests: `python -m service` on a free loopback port, its JSON log in
a file, started and stopped with real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        model_path: Path | None,
        workdir: Path,
        name: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """`model_path` None: no --model-path (the server takes its model from `env`, a model repository say)."""
        self.model_path = model_path
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"server-{name}-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")} | (env or {})
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """`python -m service` on this server's port, CPU provider, 1 ms batch delay, then its own args."""
        model = [] if self.model_path is None else ["--model-path", str(self.model_path)]
        return [
            sys.executable,
            "-m",
            "service",
            *model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--provider",
            "cpu",
            "--max-batch-delay-ms",
            "1",
            *self.args,
        ]

    def start(self) -> ServerProcess:
        cmd = self.command()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while True:
                assert self.alive, f"server {self.name} exited:\n{self.log_text()}"
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server {self.name} did not become ready:\n{self.log_text()}"
                time.sleep(0.1)

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Cleanup: SIGKILL whatever is still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]


Launch = Callable[..., ServerProcess]  # the e2e conftest's `launch` fixture: launch(name, [server_class], **env)
