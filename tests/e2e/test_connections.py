"""Connections against a real server process: thousands of half-sent requests do not starve a legitimate one and
are closed after the header timeout, as is a kept-alive connection's half-sent next request; idle keep-alive
connections are closed; connections beyond the cap get 503 too_many_connections; WebSocket query strings never
reach the log and refused handshakes log no ERROR; after SIGTERM with a shutdown delay /readyz answers 503 draining
before the listener closes."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.process import Launch, ServerProcess

PARTIAL = b"GET /readyz HTTP/1.1\r\nHost: x\r\n"  # a request line and one header, then nothing more
IDLE_SOCKETS = 3000


@contextlib.contextmanager
def open_files(n: int) -> Iterator[None]:
    """This test process may open n files (up to its hard limit), restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def half_sent(port: int, count: int, payload: bytes = PARTIAL) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if payload:
            s.sendall(payload)
        sockets.append(s)
    return sockets


def whole_response(s: socket.socket) -> bytes:
    """One response read to its end (its head and body may come in separate segments), nothing of the next one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.strip().lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        chunk = s.recv(4096)
        assert chunk, "the server closed the connection"
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_server(s: socket.socket, wait_s: float) -> bool:
    """True when the server closes the connection within wait_s (whatever it sent before)."""
    deadline = time.monotonic() + wait_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            if s.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def ready(server: ServerProcess) -> int:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        return client.get("/readyz").status_code


@pytest.mark.e2e
def test_thousands_of_half_sent_requests_do_not_starve_a_real_one_and_are_closed(launch: Launch) -> None:
    timeout_s = 4.0
    server = launch("half-sent", LSTM_SERVE_HEADER_TIMEOUT_S=str(timeout_s))
    server.wait_ready()
    with open_files(IDLE_SOCKETS + 1000):
        sockets = half_sent(server.port, IDLE_SOCKETS)
        last_sent = time.monotonic()
        try:
            assert ready(server) == 200  # served while the half-sent requests are open
            # The last one is still open before its timeout...
            assert not closed_by_server(sockets[-1], 0.2)
            # ...and every one is closed by the server once the timeout has passed for it.
            time.sleep(max(0.0, last_sent + timeout_s + 0.5 - time.monotonic()))
            still_open = [s for s in sockets if not closed_by_server(s, 2.0)]
            assert not still_open, f"{len(still_open)} of {IDLE_SOCKETS} half-sent connections are still open"
            assert ready(server) == 200
        finally:
            for s in sockets:
                s.close()
    assert server.alive


@pytest.mark.e2e
def test_a_kept_alive_connection_that_half_sends_its_next_request_is_closed_at_the_header_timeout(
    launch: Launch,
) -> None:
    """The timer starts with the first bytes of each request, not only of the connection's first: a request whose
    headers arrive whole never needs it, one whose headers stop halfway is cut, here long before keep-alive would."""
    server = launch("kept-alive", LSTM_SERVE_HEADER_TIMEOUT_S="1", LSTM_SERVE_KEEP_ALIVE_TIMEOUT_S="30")
    server.wait_ready()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        for _ in range(3):  # whole requests on one connection: each answered, the connection kept
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert whole_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # longer than the header timeout between requests: idle is keep-alive's business
        s.sendall(PARTIAL)
        started = time.monotonic()
        assert closed_by_server(s, 5.0)
        assert 0.8 <= time.monotonic() - started < 4.0
    finally:
        s.close()
    assert ready(server) == 200


@pytest.mark.e2e
def test_idle_keep_alive_connections_are_closed_and_excess_connections_get_503(launch: Launch) -> None:
    server = launch("connections", LSTM_SERVE_KEEP_ALIVE_TIMEOUT_S="1", LSTM_SERVE_MAX_CONNECTIONS="40")
    server.wait_ready()
    # Keep-alive: one request answered, then the idle connection is closed by the server after about 1 s.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert closed_by_server(s, 3.0)
    s.close()
    # 40 connections that sent nothing fill the cap; the next one is answered 503 in the service's shape.
    sockets = half_sent(server.port, 40, payload=b"")
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            r = client.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "too_many_connections", r.text
        assert r.json()["error"]["details"] == {"max_connections": 40}
    finally:
        for s in sockets:
            s.close()
    time.sleep(0.3)
    assert ready(server) == 200  # room again


@pytest.mark.e2e
def test_websocket_query_strings_are_never_logged_and_refused_handshakes_log_no_error(launch: Launch) -> None:
    server = launch("ws-logs", LSTM_SERVE_API_KEYS="the-key-0123456789")
    server.wait_ready()
    auth = {"Authorization": "Bearer the-key-0123456789"}
    with httpx.Client(base_url=server.base_url, timeout=10, headers=auth) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
    url = f"ws://127.0.0.1:{server.port}/v1/sessions/{sid}/stream"
    with connect(f"{url}?token=SECRET-ACCEPTED", additional_headers=auth) as ws:
        ws.send(json.dumps({"text": "ab"}))
        assert json.loads(ws.recv(timeout=10))["position"] == 2
    for i in range(50):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{url}?token=SECRET-REFUSED-{i}", open_timeout=10)
        assert refused.value.response.status_code == 401
    time.sleep(0.5)
    text = server.log_text()
    assert "SECRET" not in text
    logs = server.logs()
    errors = [e for e in logs if e.get("level") in ("error", "critical")]
    assert not errors, errors
    refusals = [e for e in logs if e.get("msg") == "websocket handshake refused"]
    assert 1 <= len(refusals) <= 2 and refusals[0]["level"] == "info", refusals  # rate-limited: one per 10 s
    assert any("[accepted]" in e.get("msg", "") for e in logs)  # the handshake is logged, without its query


@pytest.mark.e2e
def test_readyz_answers_503_draining_during_the_shutdown_delay(launch: Launch) -> None:
    server = launch("delay", LSTM_SERVE_SHUTDOWN_DELAY_S="2")
    server.wait_ready()
    server.signal(signal.SIGTERM)
    time.sleep(0.5)  # well past uvicorn's 0.1 s tick: without the delay the listener would be gone
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        assert client.post("/v1/sessions", json={}).json()["error"]["code"] == "draining"
        assert client.post("/v1/predict", json={"text": "ab"}).status_code == 200  # other requests are served
    deadline = time.monotonic() + 10
    while True:  # then the listener closes and the drain runs as before
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert server.wait(timeout=30) == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"\x16\x03\x01 not http\r\n\r\n",
    ],
    ids=["bad-content-length", "content-length-and-transfer-encoding", "nul-in-a-header", "not-http"],
)
def test_malformed_http_gets_400_in_the_error_shape(launch: Launch, raw: bytes) -> None:
    server = launch("malformed")
    server.wait_ready()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert json.loads(body)["error"]["code"] == "invalid_request"
