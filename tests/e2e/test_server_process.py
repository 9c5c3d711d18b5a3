"""The real server process: `python -m service` on a free port, the README flow over TCP, a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_process_readme_flow(tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--model-path",
                str(tiny_model_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--provider",
                "cpu",
                "--max-batch-delay-ms",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready:\n" + log_path.read_text()
                time.sleep(0.1)
            assert client.get("/healthz").json() == {"status": "ok"}
            created = client.post("/v1/sessions", json={})
            assert created.status_code == 201
            sid = created.json()["session_id"]
            r = client.post(f"/v1/sessions/{sid}/predict", json={"text": "To be, or not to "})
            assert r.status_code == 200
            body = r.json()
            assert body["position"] == 17 and len(body["next"]) == 5
            stateless = client.post("/v1/predict", json={"text": "To be, or not to "}).json()
            assert [t["id"] for t in body["next"]] == [t["id"] for t in stateless["next"]]
            assert client.get("/v1/model").json()["provider"] == "cpu"
            bad = client.post(f"/v1/sessions/{sid}/predict", json={"text": "ü"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_token"
            assert "lstm_serve_requests_total" in client.get("/metrics").text
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean exit here.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry.get("msg") == "request"]
    predict = next(e for e in requests if e["route"] == "/v1/sessions/{id}/predict" and e["status"] == 200)
    assert predict["session_id"] == sid and predict["latency_ms"] > 0
    assert any(e.get("msg") == "model ready" and e.get("provider") == "cpu" for e in lines)
    assert any(e.get("msg") == "drained" for e in lines)  # the lifespan shutdown ran
    assert all(line.startswith("{") for line in log_path.read_text().splitlines() if line.strip())
