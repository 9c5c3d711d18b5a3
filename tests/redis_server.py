"""A real redis-server for the tests (the Debian package): a subprocess on a free loopback port, no persistence.

`RedisServer.launch(workdir)` starts one (skipping the test if redis-server is not installed; CI installs it);
`stop()` ends it gracefully, `kill()` with SIGKILL, `restart()` brings it back on the same port (empty: nothing is
saved). The `redis_server` fixture in tests/conftest.py wraps it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 10.0


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in (Path("/usr/bin/redis-server"), Path("/usr/sbin/redis-server")):
        if candidate.is_file():
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{port}.log"

    @classmethod
    def launch(cls, workdir: Path) -> RedisServer:
        binary = find_redis_server()
        if binary is None:
            pytest.skip("redis-server is not installed here (apt-get install -y redis-server); CI installs it")
        for _ in range(5):  # a free port may be taken by someone else before redis binds it: try another
            server = cls(binary, workdir, free_port())
            if server.start(check=False):
                return server
        raise RuntimeError(f"redis-server did not start; see {workdir}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, check: bool = True) -> bool:
        """Start on self.port and wait until it answers PING; False (or an error with check) if it would not."""
        assert not self.running, "already running"
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        if check:
            raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log_path.read_text()}")
        return False

    def stop(self) -> None:
        """Graceful stop (SIGTERM; nothing is saved: --save '')."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Back on the same port, empty. Retries for a few seconds in case the port is briefly unavailable."""
        self.stop()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.start(check=time.monotonic() > deadline):
            time.sleep(0.2)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
