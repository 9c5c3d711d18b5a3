"""A restarted server process keeps every key's session count: MAX_SESSIONS_PER_KEY holds across a restart from
the memory snapshot (the counts come back with the sessions), and deletes keep it exact."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.process import Launch

pytestmark = pytest.mark.e2e


def test_per_key_limit_after_a_restart_from_the_snapshot(launch: Launch, tmp_path: Path) -> None:
    env = {
        "LSTM_SERVE_API_KEYS": "key-a,key-b",
        "LSTM_SERVE_MAX_SESSIONS_PER_KEY": "3",
        "LSTM_SERVE_SNAPSHOT_PATH": str(tmp_path / "sessions.snapshot"),
    }
    a, b = {"authorization": "Bearer key-a"}, {"authorization": "Bearer key-b"}
    first = launch("first", **env)
    first.wait_ready()
    with first.client() as http:
        owned = [http.post("/v1/sessions", json={}, headers=a).json()["session_id"] for _ in range(3)]
        assert http.post("/v1/sessions", json={}, headers=b).status_code == 201
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0  # the final snapshot was written

    second = launch("second", **env)
    second.wait_ready()
    with second.client() as http:
        assert http.get(f"/v1/sessions/{owned[2]}", headers=a).status_code == 200  # restored
        r = http.post("/v1/sessions", json={}, headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions", r.text
        assert http.post("/v1/sessions", json={}, headers=b).status_code == 201  # key b holds 2 of its 3
        assert http.delete(f"/v1/sessions/{owned[0]}", headers=a).status_code == 204
        assert http.post("/v1/sessions", json={}, headers=a).status_code == 201  # one more after the delete
        assert http.post("/v1/sessions", json={}, headers=a).status_code == 429  # and exactly one
