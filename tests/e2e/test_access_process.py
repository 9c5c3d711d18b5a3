"""Access on a real server process: keys over TCP and WebSocket, /metrics on its own port, keys never logged, and a
model whose SHA-256 does not match stopping the start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.process import ServerProcess, free_port

pytestmark = pytest.mark.e2e

KEY, OTHER = "e2e-key-abcdefghijklmnop", "e2e-other-key-qrstuvwxyz"


@pytest.fixture
def keyed(tiny_model_path: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    metrics_port = free_port()
    server = ServerProcess(
        tiny_model_path,
        tmp_path,
        "keyed",
        env={"LSTM_SERVE_API_KEYS": f"{KEY},{OTHER}", "LSTM_SERVE_METRICS_PORT": str(metrics_port)},
    )
    server.start()
    try:
        server.wait_ready()
        yield server, metrics_port
    finally:
        server.stop()


async def _ws_first_frame(url: str, key: str, text: str | None = None) -> dict[str, object]:
    """The first frame the server sends, after sending `text` if given."""
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        if text is not None:
            await ws.send(json.dumps({"text": text}))
        answer: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return answer


def test_keys_ownership_and_metrics_port(keyed: tuple[ServerProcess, int]) -> None:
    server, metrics_port = keyed
    mine, theirs = ({"Authorization": f"Bearer {k}"} for k in (KEY, OTHER))
    with server.client() as client:
        assert client.post("/v1/predict", json={"text": "a"}).status_code == 401
        sid = client.post("/v1/sessions", json={"text": "ROMEO:\n"}, headers=mine).json()["session_id"]
        assert client.get(f"/v1/sessions/{sid}", headers=theirs).status_code == 404
        assert client.get("/metrics").status_code == 404  # not exposed with the API
    ws_url = f"ws://127.0.0.1:{server.port}/v1/sessions/{sid}/stream"
    assert asyncio.run(_ws_first_frame(ws_url, KEY, "a"))["position"] == len("ROMEO:\n") + 1
    refused = asyncio.run(_ws_first_frame(ws_url, OTHER))  # answered, then closed 4404
    assert refused["error"]["code"] == "session_not_found"  # type: ignore[index]
    with pytest.raises(websockets.InvalidStatus) as no_key:
        asyncio.run(_ws_first_frame(ws_url, "wrong"))
    assert no_key.value.response.status_code == 401
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'lstm_serve_rejections_total{reason="unauthorized"} 2.0' in metrics
    server.stop()
    log = server.log_text()
    assert KEY not in log and OTHER not in log and "wrong" not in log


def test_mismatched_model_sha256_stops_the_start(tiny_model_path: Path, tmp_path: Path) -> None:
    server = ServerProcess(tiny_model_path, tmp_path, "tampered", env={"LSTM_SERVE_MODEL_SHA256": "ab" * 32})
    server.start()
    try:
        assert server.wait(timeout=60) != 0
    finally:
        server.stop()
    assert "not the expected " + "ab" * 32 in server.log_text()
