"""Graceful shutdown with real processes and signals: on SIGTERM readiness turns false at once, new sessions are
refused with 503 draining while requests already running finish, the process exits 0 within the deadline, and
with LSTM_SERVE_SNAPSHOT_PATH the sessions survive the restart with identical predictions."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.config import Settings
from tests.e2e.process import Launch


class SlowRequest:
    """A request whose body arrives in two parts: the server has accepted it and started it before the second."""

    def __init__(self, port: int, method: str, path: str, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + self.body[:1])

    def finish(self) -> tuple[int, dict[str, Any]]:
        self.sock.sendall(self.body[1:])
        data = b""
        while chunk := self.sock.recv(65536):  # the server closes the connection: it is shutting down
            data += chunk
        self.sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.e2e
def test_sigterm_finishes_running_work_refuses_new_sessions_and_restores_them(launch: Launch, tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snapshot"
    env = {"LSTM_SERVE_SNAPSHOT_PATH": str(snapshot), "LSTM_SERVE_SHUTDOWN_GRACE_S": "20"}
    first = launch("first", **env)
    first.wait_ready()
    with first.client() as client:
        sid = client.post("/v1/sessions", json={"text": "To be, or "}).json()["session_id"]
    new_session = SlowRequest(first.port, "POST", "/v1/sessions", {"text": "abc"})
    step = SlowRequest(first.port, "POST", f"/v1/sessions/{sid}/predict", {"text": "not to"})
    time.sleep(0.3)  # both requests are running (their bodies are on the way) when the signal arrives
    first.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not refused(first.port):  # no new connections once uvicorn's next tick saw the signal
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert first.alive, "it waits for the running requests"
    status, body = new_session.finish()
    assert status == 503 and body["error"]["code"] == "draining"
    status, body = step.finish()
    assert status == 200 and body["position"] == 16  # a running request on an existing session completes
    assert first.wait(timeout=30) == 0
    messages = [e.get("msg") for e in first.logs()]
    for expected in (
        "shutdown requested: readiness false, refusing new sessions and streams",
        "drained",
        "session snapshot written",
    ):
        assert expected in messages, messages
    assert messages.index("session snapshot written") < messages.index("drained")
    assert snapshot.exists()

    second = launch("second", **env)
    second.wait_ready()
    with second.client() as client:
        assert client.get(f"/v1/sessions/{sid}").json()["position"] == 16
        after = client.post(f"/v1/sessions/{sid}/predict", json={"text": " be"}).json()
        ref = client.post("/v1/sessions", json={"text": "To be, or "}).json()["session_id"]
        client.post(f"/v1/sessions/{ref}/predict", json={"text": "not to"})
        want = client.post(f"/v1/sessions/{ref}/predict", json={"text": " be"}).json()
    assert after["position"] == want["position"] == 19
    assert after["next"] == want["next"]
    assert any(e.get("msg") == "sessions restored from snapshot" and e.get("sessions") == 1 for e in second.logs())
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


@pytest.mark.e2e
def test_sigterm_exits_at_the_deadline_when_a_request_never_finishes(launch: Launch) -> None:
    server = launch("stuck", LSTM_SERVE_SHUTDOWN_GRACE_S="1")
    server.wait_ready()
    stuck = SlowRequest(server.port, "POST", "/v1/predict", {"text": "never finished"})
    time.sleep(0.3)
    t0 = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 10, elapsed
    stuck.sock.close()
    assert any("timeout graceful shutdown exceeded" in str(e.get("msg")) for e in server.logs())


async def test_shutdown_refuses_new_sessions_but_serves_running_ones(tiny_model_path: Path) -> None:
    """In process, the moment after the signal (a real process stops accepting connections 0.1 s later)."""
    app = create_app(Settings(model_path=tiny_model_path, provider="cpu"))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        engine = app.state.engine
        sid = (await client.post("/v1/sessions", json={"text": "To be"})).json()["session_id"]
        assert (await client.get("/readyz")).status_code == 200
        engine.begin_shutdown()  # what the SIGTERM handler calls
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
        for refused_request in (client.post("/v1/sessions", json={}), client.post(f"/v1/sessions/{sid}/fork")):
            r = await refused_request
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
            assert r.headers["retry-after"] == "1"
        assert (await client.post(f"/v1/sessions/{sid}/predict", json={"text": ", or"})).status_code == 200
        assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 9
        assert (await client.post("/v1/predict", json={"text": "a"})).status_code == 200
        assert "lstm_serve_ready 0.0" in (await client.get("/metrics")).text
