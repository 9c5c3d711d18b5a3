"""Fixtures of the end-to-end tests: real server processes on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.process import Launch, ServerProcess


@pytest.fixture
def launch(tiny_model_path: Path, tmp_path: Path) -> Iterator[Launch]:
    """`launch(name, [server_class], **env)` starts a server on the tiny model; every one is SIGKILLed at the end,
    whatever the test did."""
    started: list[ServerProcess] = []

    def start(name: str, server_class: type[ServerProcess] = ServerProcess, **env: str) -> ServerProcess:
        server = server_class(tiny_model_path, tmp_path, name, env=env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
