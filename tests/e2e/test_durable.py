"""Durable mode (LSTM_SERVE_DURABLE) against real server processes: SIGKILL under 20 stepping clients loses no
acknowledged step. Each client steps its session one character at a time with `expected_position`, so a step is
acknowledged exactly when its 200 arrives; after the restart every session is at least at its last acknowledged
position (at most one further: the step in flight at the kill, journaled but never answered), with exactly the
state of that text."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.process import Launch, ServerProcess
from tests.e2e.support import TEXT, no_unhandled_errors, replay_prefixes, state_of

pytestmark = pytest.mark.e2e

CLIENTS = 20
RUN_S = 3.0  # stepping before the kill
MAX_STEPS = 2_000  # per client: a bound on every loop, the kill ends them long before
LONG_TEXT = TEXT * (MAX_STEPS // len(TEXT) + 2)


@dataclass
class Stepper:
    sid: str
    acked: int = 0  # the last position acknowledged with a 200
    in_flight: bool = False  # a step sent whose answer never came (the kill)
    unexpected: str = ""

    def run(self, server: ServerProcess, killed: threading.Event) -> None:
        with server.client(timeout=30) as client:
            for _ in range(MAX_STEPS):
                if killed.is_set():
                    return
                self.in_flight = True
                try:
                    r = client.post(
                        f"/v1/sessions/{self.sid}/predict",
                        json={"text": LONG_TEXT[self.acked], "expected_position": self.acked},
                    )
                except httpx.TransportError:
                    return
                if r.status_code != 200 or r.json()["position"] != self.acked + 1:
                    self.unexpected = f"{r.status_code} {r.text}"
                    return
                self.in_flight = False
                self.acked += 1


@pytest.mark.timeout(300)
def test_sigkill_under_20_stepping_clients_loses_no_acknowledged_step(launch: Launch, tmp_path: Path) -> None:
    env = {
        "LSTM_SERVE_SNAPSHOT_PATH": str(tmp_path / "sessions.snapshot"),
        "LSTM_SERVE_SNAPSHOT_INTERVAL_S": "3600",  # no periodic snapshot during the test: the journal alone
        "LSTM_SERVE_DURABLE": "true",
    }
    first = launch("first", **env)
    first.wait_ready()
    with first.client() as client:
        steppers = [Stepper(client.post("/v1/sessions", json={}).json()["session_id"]) for _ in range(CLIENTS)]
    killed = threading.Event()
    threads = [threading.Thread(target=s.run, args=(first, killed), daemon=True) for s in steppers]
    started = time.monotonic()
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60  # a few seconds of steps; longer only on a machine too busy to make them
    while time.monotonic() < deadline and (
        time.monotonic() - started < RUN_S or sum(s.acked for s in steppers) < CLIENTS * 10
    ):
        time.sleep(0.05)
    first.stop()  # SIGKILL, mid-traffic: no final snapshot
    killed.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert not [s.unexpected for s in steppers if s.unexpected]
    acknowledged = sum(s.acked for s in steppers)
    assert acknowledged >= CLIENTS * 10, "the clients barely stepped"

    second = launch("second", **env)
    second.wait_ready()
    replayed = [e for e in second.logs() if e.get("msg") == "session journal replayed"]
    assert replayed and replayed[0]["sessions"] == CLIENTS, replayed
    lost = 0
    with second.client(timeout=30) as client:
        restored = {s.sid: state_of(client, s.sid) for s in steppers}
        # Every session stepped through a prefix of LONG_TEXT: one replay gives the state of each prefix.
        replays = replay_prefixes(client, LONG_TEXT, [position for position, _ in restored.values()])
        for s in steppers:
            position, state = restored[s.sid]
            lost += max(0, s.acked - position)
            assert s.acked <= position <= s.acked + int(s.in_flight), (s.sid, s.acked, position)
            replay_position, replay_state = replays[position]
            assert replay_position == position
            np.testing.assert_allclose(state, replay_state, rtol=0, atol=1e-6)
    print(f"SIGKILL in durable mode: {acknowledged} steps acknowledged by {CLIENTS} clients, {lost} lost")
    assert lost == 0
    no_unhandled_errors(second)
