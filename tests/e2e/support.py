"""Helpers the end-to-end tests share: the text the clients step through, a session's state as the server exports
it, the same text replayed into a fresh session, two replicas on one Redis, and the check that no server answered
500 or logged an unhandled error."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import httpx
import numpy as np

from tests.e2e.process import Launch, ServerProcess
from tests.redis_server import RedisServer

TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate:"


def start_replicas(launch: Launch, redis_server: RedisServer) -> tuple[ServerProcess, ServerProcess]:
    """Two servers, "a" and "b", sharing `redis_server` as their state store; both ready."""
    env = {"LSTM_SERVE_STATE_BACKEND": "redis", "LSTM_SERVE_REDIS_URL": redis_server.url}
    a, b = launch("a", **env), launch("b", **env)  # both start loading at once
    a.wait_ready()
    b.wait_ready()
    return a, b


def state_of(client: httpx.Client, sid: str) -> tuple[int, np.ndarray]:
    """The session's position and its state (h then C) as little-endian float32."""
    body = client.get(f"/v1/sessions/{sid}/state").json()
    raw = base64.b64decode(body["h"]) + base64.b64decode(body["c"])
    return body["position"], np.frombuffer(raw, dtype="<f4")


def replay(client: httpx.Client, text: str) -> tuple[int, np.ndarray]:
    """A fresh session fed `text` one character per request, as the tests' sessions were."""
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    for ch in text:
        assert client.post(f"/v1/sessions/{sid}/predict", json={"text": ch}).status_code == 200
    return state_of(client, sid)


def replay_prefixes(client: httpx.Client, text: str, positions: Iterable[int]) -> dict[int, tuple[int, np.ndarray]]:
    """`replay` of every prefix text[:p], p in `positions`, from one fresh session fed `text` one character per
    request: its position and state are read as it passes each p (sessions that stepped through prefixes of the
    same text are checked against one replay instead of one replay each)."""
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    out: dict[int, tuple[int, np.ndarray]] = {}
    fed = 0
    for p in sorted(set(positions)):
        for ch in text[fed:p]:
            assert client.post(f"/v1/sessions/{sid}/predict", json={"text": ch}).status_code == 200
        fed = p
        out[p] = state_of(client, sid)
    return out


def no_unhandled_errors(*servers: ServerProcess) -> None:
    for server in servers:
        bad = [e for e in server.logs() if e.get("msg") == "unhandled error" or e.get("status") == 500]
        assert not bad, f"{server.name}: {bad[:3]}"
