"""Faults against real server processes, each asserting what a client sees and that no acknowledged update is
lost: SIGKILL with memory snapshots, SIGTERM under load with a stream in flight, Redis stopped and restarted from
its own dump, a corrupt snapshot at start, and a full disk while a snapshot is written.

Faults covered elsewhere (listed so that nobody adds them twice): a client that disconnects mid-stream
(tests/service/api/test_generate.py, tests/e2e/test_protocol_clients.py), SIGKILL of a replica on Redis and Redis
crashing and coming back empty (tests/e2e/test_replicas.py), SIGTERM with one running request
(tests/e2e/test_shutdown.py).

The clients here step a session one character at a time with `expected_position`, so an update is acknowledged
exactly when its 200 arrives, and a request left without an answer (the server died, Redis went away) is
recognised on the retry: 409 naming the position after it means it was applied, never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import onnx
import pytest

from model.onnx_meta import ModelMetadata
from service.client import Client
from service.state.memory import MemoryStateStore
from service.state.snapshot import Snapshot, read_snapshot, write_snapshot
from tests.e2e.process import ROOT, Launch, ServerProcess
from tests.e2e.support import TEXT, no_unhandled_errors, replay, start_replicas, state_of
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

MAX_STEPS = 20_000  # per client: every loop below is bounded, the faults end them long before
LONG_TEXT = TEXT * (MAX_STEPS // len(TEXT) + 2)  # what a client that stepped through TEXT again and again sent
WAIT_S = 60.0  # generous: a loaded 2-core CI machine


def wait_for(condition: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_entries(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's JSON log so far; a line still being written (read while the server runs) is skipped."""
    entries = []
    for line in server.log_text().splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return [e for e in entries if isinstance(e, dict)]


def messages(server: ServerProcess, msg: str) -> list[dict[str, Any]]:
    return [e for e in log_entries(server) if e.get("msg") == msg]


def model_meta(model_path: Path) -> ModelMetadata:
    proto = onnx.load(str(model_path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})


# --- a client stepping one session -----------------------------------------------------------------------------


@dataclass
class Stepper:
    """One session, stepped one character of TEXT at a time; `text` is what the server acknowledged."""

    sid: str
    text: str = ""
    acks: list[tuple[float, int]] = field(default_factory=list)  # (wall-clock time the 200 arrived, position)
    pending: str | None = None  # sent, and no answer came: it may or may not have been applied
    statuses: Counter[tuple[int, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def next_char(self) -> str:
        return TEXT[len(self.text) % len(TEXT)]

    def step(self, client: httpx.Client) -> int:
        """One conditional step; the HTTP status (0: no answer). Resolves a pending step on a 409."""
        ch = self.next_char()
        self.pending = ch
        try:
            r = client.post(f"/v1/sessions/{self.sid}/predict", json={"text": ch, "expected_position": len(self.text)})
        except httpx.TransportError:
            return 0
        code = r.json()["error"]["code"] if r.status_code >= 400 else ""
        self.statuses[(r.status_code, code)] += 1
        if r.status_code == 200 or (
            r.status_code == 409 and r.json()["error"]["details"]["position"] == len(self.text) + 1
        ):  # a step whose answer was lost had been applied
            self.acknowledge(ch, r.json()["position"] if r.status_code == 200 else len(self.text) + 1)
        elif r.status_code != 503:
            self.unexpected.append(f"{r.status_code} {r.text}")
        return r.status_code

    def acknowledge(self, ch: str, position: int) -> None:
        self.text += ch
        self.pending = None
        if position != len(self.text):
            self.unexpected.append(f"acknowledged at {position}, expected {len(self.text)}")
        self.acks.append((time.time(), position))

    def acked_before(self, moment: float) -> int:
        """The last position acknowledged before `moment` (wall clock): the server had applied it by then."""
        return max((pos for t, pos in self.acks if t < moment), default=0)


def new_steppers(server: ServerProcess, n: int) -> list[Stepper]:
    with server.client() as client:
        return [Stepper(client.post("/v1/sessions", json={}).json()["session_id"]) for _ in range(n)]


def step_until_gone(server: ServerProcess, stepper: Stepper, stop: threading.Event) -> None:
    """Step until the server stops answering (killed, or closing its connections) or `stop` is set."""
    with server.client(timeout=10) as client:
        for _ in range(MAX_STEPS):
            if stop.is_set() or stepper.step(client) == 0:
                return
            time.sleep(0.002)  # a little air for the other clients on a 2-core machine


def run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=WAIT_S)
        assert not t.is_alive(), "a client thread did not finish"


def assert_same_state_as_replay(client: httpx.Client, sid: str, text: str) -> None:
    """The session's state is exactly that of `text` fed one character per request: nothing lost or doubled."""
    position, state = state_of(client, sid)
    replay_position, replay_state = replay(client, text)
    assert position == replay_position == len(text)
    np.testing.assert_allclose(state, replay_state, rtol=0, atol=1e-6)


# --- SIGKILL with memory snapshots -----------------------------------------------------------------------------


def check_against_snapshot(stepper: Stepper, snap: Snapshot) -> int:
    """The snapshot holds, for the session, a position the server really had: at least every position
    acknowledged before it was captured, at most the step in flight. Returns that position."""
    assert stepper.sid in snap.ids
    position = int(snap.position[snap.ids.index(stepper.sid)])
    possible = {0, *(pos for _, pos in stepper.acks)} | ({len(stepper.text) + 1} if stepper.pending else set())
    assert position in possible, (position, len(stepper.text))
    assert position >= stepper.acked_before(snap.written_at), "an update acknowledged before the snapshot is lost"
    return position


@pytest.mark.timeout(240)
def test_sigkill_with_memory_snapshots_keeps_every_update_acknowledged_before_the_last_snapshot(
    launch: Launch, tmp_path: Path
) -> None:
    snapshot = tmp_path / "sessions.snapshot"
    env = {"LSTM_SERVE_SNAPSHOT_PATH": str(snapshot), "LSTM_SERVE_SNAPSHOT_INTERVAL_S": "0.3"}
    first = launch("first", **env)
    first.wait_ready()
    with first.client() as client:
        model = client.get("/v1/model").json()
    steppers, stop = new_steppers(first, 6), threading.Event()
    threads = run_threads([partial(step_until_gone, first, s, stop) for s in steppers])
    try:
        wait_for(
            lambda: (
                len([e for e in messages(first, "session snapshot written") if e.get("sessions") == 6]) >= 2
                and all(len(s.acks) >= 10 for s in steppers)
            ),
            "two snapshots of the sessions while they step",
        )
        first.stop()  # SIGKILL, mid-traffic: no final snapshot
    finally:
        stop.set()
        join(threads)
    # What the clients saw: every answer was a 200 until the connection failed.
    for s in steppers:
        assert set(s.statuses) == {(200, "")} and not s.unexpected, (s.statuses, s.unexpected)
    snap = read_snapshot(snapshot, model["fingerprint"], (model["layers"], model["hidden_size"]))
    restored = {s.sid: check_against_snapshot(s, snap) for s in steppers}
    lost = sum(len(s.text) - restored[s.sid] for s in steppers)
    print(
        f"SIGKILL: {sum(map(len, (s.text for s in steppers)))} steps acknowledged, {lost} of them after the "
        "last snapshot (lost, as documented)"
    )

    second = launch("second", **env)
    second.wait_ready()
    assert messages(second, "sessions restored from snapshot")[0]["sessions"] == 6
    with second.client() as client:
        for s in steppers:
            # The session is exactly where the snapshot left it, with that position's state.
            assert_same_state_as_replay(client, s.sid, LONG_TEXT[: restored[s.sid]])
            # A client carrying on from its last acknowledged position is told where the session really is.
            r = client.post(
                f"/v1/sessions/{s.sid}/predict", json={"text": s.next_char(), "expected_position": len(s.text)}
            )
            if restored[s.sid] == len(s.text):
                assert r.status_code == 200, r.text
            else:
                assert r.status_code == 409 and r.json()["error"]["details"]["position"] == restored[s.sid], r.text
    no_unhandled_errors(second)  # the killed server's log may end mid-line


# --- SIGTERM under load ----------------------------------------------------------------------------------------


@dataclass
class StreamReader:
    """A long streamed generation read to its end, in a thread; `tokens` grows as events arrive."""

    base_url: str
    sid: str
    tokens: list[str] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None

    def run(self, max_tokens: int) -> None:
        try:
            with Client(self.base_url, timeout=WAIT_S) as client:
                stream = client.session(self.sid).stream(max_tokens=max_tokens, temperature=0)
                for event in stream:
                    self.tokens.append(event.token)
                self.result = stream.result
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.timeout(240)
def test_sigterm_under_load_finishes_running_steps_and_streams_and_loses_no_acknowledged_update(
    launch: Launch, tmp_path: Path
) -> None:
    env = {
        "LSTM_SERVE_SNAPSHOT_PATH": str(tmp_path / "sessions.snapshot"),
        "LSTM_SERVE_SNAPSHOT_INTERVAL_S": "0",
        "LSTM_SERVE_SHUTDOWN_GRACE_S": "30",
    }
    first = launch("first", **env)
    first.wait_ready()
    steppers, stop = new_steppers(first, 4), threading.Event()
    with first.client() as client:
        streamed = client.post("/v1/sessions", json={"text": "ROMEO:\n"}).json()["session_id"]
    reader = StreamReader(first.base_url, streamed)
    threads = run_threads([partial(step_until_gone, first, s, stop) for s in steppers])
    try:
        wait_for(lambda: all(len(s.acks) >= 5 for s in steppers), "load")
        threads += run_threads([partial(reader.run, 1000)])
        wait_for(lambda: len(reader.tokens) >= 3, "a stream under way")
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT_S) == 0
    finally:
        stop.set()
        join(threads)
    # The stream running at the signal was finished, not cut: all 1000 tokens, the final event, [DONE].
    assert reader.error is None, repr(reader.error)
    assert len(reader.tokens) == 1000 and reader.result.finish_reason == "length" and reader.result.position == 1007
    log = first.logs()
    signalled = next(i for i, e in enumerate(log) if str(e.get("msg")).startswith("shutdown requested"))
    generate = next(i for i, e in enumerate(log) if e.get("route") == "/v1/sessions/{id}/generate")
    assert signalled < generate and log[generate]["status"] == 200, "the stream ended before the signal"
    # Every step got a 200 (the running ones finished) until the server closed the connections.
    for s in steppers:
        assert set(s.statuses) == {(200, "")} and not s.unexpected, (s.statuses, s.unexpected)

    second = launch("second", **env)
    second.wait_ready()
    with second.client() as client:
        assert client.get(f"/v1/sessions/{streamed}").json()["position"] == 1007
        for s in steppers:
            position = client.get(f"/v1/sessions/{s.sid}").json()["position"]
            # Every acknowledged step is there; a step sent as the connection closed was applied or not, once.
            assert position == len(s.text) or (s.pending and position == len(s.text) + 1), (position, len(s.text))
    no_unhandled_errors(first, second)


# --- Redis stopped and restarted -------------------------------------------------------------------------------


def shutdown_saving(redis_server: RedisServer) -> None:
    """A clean Redis stop that writes its dump (SHUTDOWN SAVE), as a Redis with persistence does."""
    with redis_server.client() as r:
        r.shutdown(save=True)
    assert redis_server.proc is not None
    redis_server.proc.wait(timeout=WAIT_S)
    redis_server.proc = None


def readyz_is(server: ServerProcess, status: int) -> Callable[[], bool]:
    def check() -> bool:
        with server.client() as client:
            return client.get("/readyz").status_code == status

    return check


def step_across(replicas: tuple[ServerProcess, ServerProcess], stepper: Stepper, stop: threading.Event) -> None:
    """Alternate the replicas step by step; on 503 wait and retry the same step (bounded like every loop)."""
    with replicas[0].client(timeout=10) as ca, replicas[1].client(timeout=10) as cb:
        for i in range(MAX_STEPS):
            if stop.is_set():
                return
            status = stepper.step((ca, cb)[i % 2])
            if status == 0:
                stepper.unexpected.append("a replica did not answer")
                return
            time.sleep(0.1 if status == 503 else 0.005)


@pytest.mark.timeout(240)
def test_redis_stopped_and_restarted_gives_503_then_recovers_with_every_acknowledged_update(
    launch: Launch, redis_server: RedisServer
) -> None:
    a, b = start_replicas(launch, redis_server)
    steppers, stop = new_steppers(a, 4), threading.Event()
    threads = run_threads([partial(step_across, (a, b), s, stop) for s in steppers])
    try:
        wait_for(lambda: all(len(s.acks) >= 5 for s in steppers), "steps before the outage")
        shutdown_saving(redis_server)
        for server in (a, b):
            wait_for(readyz_is(server, 503), f"{server.name} unready while Redis is down")
        outage = sum((s.statuses for s in steppers), Counter())[(503, "state_store_unavailable")]
        wait_for(
            lambda: sum((s.statuses for s in steppers), Counter())[(503, "state_store_unavailable")] > outage + 4,
            "the clients seeing the outage",
        )
        redis_server.start()  # the same port and directory: it loads its dump
        for server in (a, b):
            wait_for(readyz_is(server, 200), f"{server.name} ready again")
        after = [len(s.acks) for s in steppers]
        wait_for(
            lambda: all(len(s.acks) >= n + 5 for s, n in zip(steppers, after, strict=True)), "steps after the restart"
        )
    finally:
        stop.set()
        join(threads)
    seen = sum((s.statuses for s in steppers), Counter())
    print(f"Redis outage: answers {dict(seen)}")
    assert set(seen) <= {(200, ""), (503, "state_store_unavailable"), (409, "position_conflict")}, seen
    assert seen[(503, "state_store_unavailable")] > 0
    for s in steppers:
        assert not s.unexpected, s.unexpected
    with a.client() as ca, b.client() as cb:
        for s in steppers:
            assert cb.get(f"/v1/sessions/{s.sid}").json()["position"] == len(s.text)
            assert_same_state_as_replay(ca, s.sid, s.text)
    no_unhandled_errors(a, b)


# --- a corrupt snapshot at start -------------------------------------------------------------------------------


def write_real_snapshot(model_path: Path, path: Path, n: int) -> list[str]:
    """A snapshot of `n` sessions as this server would write it for this model; their ids."""
    meta = model_meta(model_path)
    layers, hidden = meta.config.num_layers, meta.config.hidden_size

    async def fill() -> MemoryStateStore:
        store = MemoryStateStore(layers, hidden, 16)
        for i in range(n):
            state = np.full((layers, hidden), 0.1 * i, np.float32)
            await store.create(ttl_s=600, h=state, c=state, position=i + 1)
        return store

    store = asyncio.run(fill())
    write_snapshot(store.to_snapshot(meta.fingerprint), path)
    return list(store._slot_of)


@pytest.mark.timeout(180)
def test_a_corrupt_snapshot_at_start_is_moved_aside_and_the_server_starts_empty(
    launch: Launch, tmp_path: Path, tiny_model_path: Path
) -> None:
    snapshot = tmp_path / "sessions.snapshot"
    old_ids = write_real_snapshot(tiny_model_path, snapshot, 3)
    damaged = snapshot.read_bytes()[: snapshot.stat().st_size // 2]  # a torn copy: the zip directory is gone
    snapshot.write_bytes(damaged)
    server = launch("corrupt", LSTM_SERVE_SNAPSHOT_PATH=str(snapshot), LSTM_SERVE_SNAPSHOT_INTERVAL_S="0")
    server.wait_ready()  # it starts: no crash loop
    errors = [e for e in server.logs() if str(e.get("msg")).startswith("session snapshot not restored (corrupt)")]
    assert len(errors) == 1 and errors[0]["level"] == "error", server.log_text()
    aside = snapshot.with_name("sessions.snapshot.corrupt")
    assert errors[0]["moved_to"] == str(aside) and aside.read_bytes() == damaged  # kept for a person to look at
    with server.client() as client:
        for sid in old_ids:  # the sessions of the corrupt file are gone: the clients are told so, and start again
            r = client.get(f"/v1/sessions/{sid}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text
        sid = client.post("/v1/sessions", json={"text": "To be"}).json()["session_id"]
        assert client.post(f"/v1/sessions/{sid}/predict", json={"text": ", or"}).json()["position"] == 9
        model = client.get("/v1/model").json()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=WAIT_S) == 0
    snap = read_snapshot(snapshot, model["fingerprint"], (model["layers"], model["hidden_size"]))
    assert snap.ids == [sid] and snap.position.tolist() == [9]  # a good snapshot again, with the acknowledged step
    no_unhandled_errors(server)


# --- a full disk while a snapshot is written ---------------------------------------------------------------------

DISK_BYTES = 64 * 1024  # the "disk": no file of the server may grow past this (RLIMIT_FSIZE)


class FullDiskServer(ServerProcess):
    """A server whose files may not grow past DISK_BYTES: writing a bigger file fails with EFBIG, as a full disk
    fails with ENOSPC. The limit is set on the child with prlimit (no preexec_fn: unsafe with threads); Python
    ignores SIGXFSZ itself, so the write fails instead of killing the process. The log goes through a pipe (no
    size limit) and a thread here copies it to the log file."""

    def start(self) -> FullDiskServer:
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (DISK_BYTES, DISK_BYTES))
        assert self.proc.stdout is not None
        threading.Thread(target=self._copy_log, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _copy_log(self, pipe: IO[bytes]) -> None:
        with self.log_path.open("ab") as log:
            for line in pipe:  # ends when the process exits
                log.write(line)
                log.flush()


def snapshot_positions(path: Path, model: dict[str, Any]) -> dict[str, int]:
    snap = read_snapshot(path, model["fingerprint"], (model["layers"], model["hidden_size"]))
    return dict(zip(snap.ids, snap.position.tolist(), strict=True))


def step_all(client: httpx.Client, positions: dict[str, int], text: str) -> None:
    for sid in positions:
        r = client.post(f"/v1/sessions/{sid}/predict", json={"text": text, "expected_position": positions[sid]})
        assert r.status_code == 200, r.text
        positions[sid] = r.json()["position"]


def failed_writes(server: ServerProcess) -> int:
    """Periodic snapshot writes that failed for want of space (EFBIG under RLIMIT_FSIZE: "File too large")."""
    return sum("File too large" in str(e.get("exc")) for e in messages(server, "writing the session snapshot failed"))


def temporary_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.timeout(180)
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit(2) (Linux) to fill the 'disk'")
def test_a_full_disk_while_snapshotting_keeps_the_previous_snapshot_and_the_server_serving(
    launch: Launch, tmp_path: Path
) -> None:
    snapshot = tmp_path / "sessions.snapshot"
    server = launch(
        "full-disk",
        FullDiskServer,
        LSTM_SERVE_SNAPSHOT_PATH=str(snapshot),
        LSTM_SERVE_SNAPSHOT_INTERVAL_S="0.3",
        LSTM_SERVE_SHUTDOWN_GRACE_S="10",
    )
    server.wait_ready()
    with server.client() as client:
        model = client.get("/v1/model").json()
        positions = {client.post("/v1/sessions", json={"text": "To be"}).json()["session_id"]: 5 for _ in range(10)}
        step_all(client, positions, ", or")
        wait_for(lambda: snapshot.exists() and snapshot_positions(snapshot, model) == positions, "a first snapshot")
        # The sessions outgrow the disk: from some size on, no snapshot can be written.
        filler = [client.post("/v1/sessions", json={"text": "x"}).json()["session_id"] for _ in range(250)]
        step_all(client, positions, " not")
        wait_for(lambda: failed_writes(server) >= 1, "a failed snapshot write")
        previous = snapshot.read_bytes()  # the last one written before the disk filled up
        assert snapshot_positions(snapshot, model).keys() >= positions.keys()  # complete and readable
        failures = failed_writes(server)
        wait_for(lambda: failed_writes(server) >= failures + 2, "more failed writes")
        assert snapshot.read_bytes() == previous  # failed writes leave the previous snapshot as it was
        print(f"full disk: {failed_writes(server)} snapshot writes failed with EFBIG, the previous one kept")
        # The server keeps serving meanwhile, reads and writes alike.
        assert client.get("/readyz").status_code == 200
        step_all(client, positions, " to")
        assert client.post("/v1/sessions", json={}).status_code == 201
        # Space comes back (the filler goes): the next snapshot holds every acknowledged update.
        for sid in filler:
            assert client.delete(f"/v1/sessions/{sid}").status_code == 204
        wait_for(lambda: snapshot_positions(snapshot, model).items() >= positions.items(), "a snapshot again")
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=WAIT_S) == 0
    assert snapshot_positions(snapshot, model).items() >= positions.items()
    assert temporary_files(tmp_path) == []  # the failed writes left no partial file behind
    no_unhandled_errors(server)


def test_sigterm_while_the_disk_is_full_exits_non_zero(launch: Launch, tmp_path: Path) -> None:
    """A final snapshot that cannot be written loses the sessions since the last good one: the process says so
    with exit status 1 (not a clean 0), so a supervisor or operator can tell."""
    snapshot = tmp_path / "sessions.snapshot"
    server = launch(
        "full-disk-exit", FullDiskServer, LSTM_SERVE_SNAPSHOT_PATH=str(snapshot), LSTM_SERVE_SNAPSHOT_INTERVAL_S="0"
    )
    server.wait_ready()
    with server.client() as client:
        for _ in range(250):  # more state than the disk holds
            assert client.post("/v1/sessions", json={"text": "x"}).status_code == 201
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=WAIT_S) == 1
    assert "writing the final session snapshot failed" in server.log_text()
    assert not snapshot.exists() and temporary_files(tmp_path) == []
