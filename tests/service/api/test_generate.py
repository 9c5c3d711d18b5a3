"""POST /v1/sessions/{id}/generate and /v1/generate: bodies, the SSE event protocol, errors before and during a
stream, client disconnects that leave the session at exactly the tokens sent, and shared batches for 64 streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.client import SSEDecoder
from service.engine.batcher import Batcher
from service.engine.streams import StreamRow
from service.errors import EngineError, StateStoreUnavailable
from service.state.store import SessionRecord
from tests.service.conftest import AppClient, SettingsFactory

PROMPT = "ROMEO:\n"
SAMPLING = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 42, "stop": ["\n\n"]}


def events(body: str) -> list[Any]:
    """The data of each SSE event, JSON-decoded except [DONE]."""
    decoded = SSEDecoder().feed(body.encode())
    return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in decoded]


async def new_session(client: AppClient, text: str = PROMPT) -> str:
    r = await client.post("/v1/sessions", json={"text": text})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


async def test_session_generation_without_streaming(client: AppClient) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 30, **SAMPLING, "stream": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"text", "tokens", "finish_reason", "position"}
    assert body["finish_reason"] in ("length", "stop") and len(body["tokens"]) == len(body["text"])
    assert body["position"] == len(PROMPT) + len(body["tokens"])
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == body["position"]
    # The same generation, stateless: identical tokens.
    stateless = (await client.post("/v1/generate", json={"text": PROMPT, "max_tokens": 30, **SAMPLING})).json()
    assert stateless == body


async def test_streaming_events(client: AppClient) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 12, **SAMPLING, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    tokens, final, done = got[:-2], got[-2], got[-1]
    assert done == "[DONE]"
    assert all(set(t) == {"token", "id", "position"} for t in tokens)
    assert [t["position"] for t in tokens] == list(range(len(PROMPT) + 1, len(PROMPT) + len(tokens) + 1))
    assert final == {
        "text": "".join(t["token"] for t in tokens),
        "tokens": [t["id"] for t in tokens],
        "finish_reason": final["finish_reason"],
        "position": len(PROMPT) + len(tokens),
    }
    # Streaming or not, the same seed gives the same tokens.
    plain = (await client.post("/v1/generate", json={"text": PROMPT, "max_tokens": 12, **SAMPLING})).json()
    assert plain["tokens"] == final["tokens"]


async def test_stop_string_is_reported(client: AppClient) -> None:
    free = (await client.post("/v1/generate", json={"text": PROMPT, "max_tokens": 30, "temperature": 0})).json()
    stop = free["text"][3]
    r = await client.post("/v1/generate", json={"text": PROMPT, "max_tokens": 30, "temperature": 0, "stop": [stop]})
    body = r.json()
    assert body["finish_reason"] == "stop" and body["text"] == free["text"][: free["text"].index(stop) + 1]


async def test_expected_position(client: AppClient) -> None:
    sid = await new_session(client)
    for stream in (False, True):
        r = await client.post(f"/v1/sessions/{sid}/generate", json={"expected_position": 3, "stream": stream})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "position_conflict")
        assert r.json()["error"]["details"] == {"expected_position": 3, "position": len(PROMPT)}
    r = await client.post(
        f"/v1/sessions/{sid}/generate", json={"expected_position": len(PROMPT), "max_tokens": 2, "text": "ab"}
    )
    assert r.status_code == 200 and r.json()["position"] == len(PROMPT) + 4


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/sessions/nope/generate", {"stream": True}, 404, "session_not_found"),
        ("/v1/generate", {"max_tokens": 5}, 422, "invalid_request"),  # no prompt
        ("/v1/generate", {"text": "a", "max_tokens": 1001}, 422, "too_many_tokens"),  # above max_generate_tokens
        ("/v1/generate", {"text": "a", "temperature": -1}, 422, "invalid_request"),
        ("/v1/generate", {"text": "a", "top_k": 77}, 422, "invalid_request"),  # above the vocabulary
        ("/v1/generate", {"text": "a", "stop": [""]}, 422, "invalid_request"),
        ("/v1/generate", {"text": "a", "seed": 2**64}, 422, "invalid_request"),
        ("/v1/generate", {"text": "a", "bogus": 1}, 422, "invalid_request"),
        ("/v1/generate", {"text": "é", "stream": True}, 422, "invalid_token"),
        ("/v1/generate", {"text": "a", "expected_position": 0}, 422, "invalid_request"),  # sessions only
    ],
)
async def test_errors_before_a_stream_get_their_status(
    client: AppClient, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    r = await client.post(path, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


async def test_an_error_midway_is_an_event_then_done(client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = await new_session(client)
    store = client.serving.store
    real_save = store.save_many  # fault injection at the store: a generation's steps run inside the batcher
    writes = 0

    async def failing_save(*args: Any) -> list[SessionRecord | EngineError]:
        nonlocal writes
        writes += 1  # one write per generated token (no prompt: the first token comes from the stored state)
        if writes == 3:
            raise StateStoreUnavailable("the state store cannot be reached")
        return await real_save(*args)

    monkeypatch.setattr(store, "save_many", failing_save)
    r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 10, "stream": True})
    got = events(r.text)
    assert [type(e) for e in got] == [dict, dict, dict, str]
    assert got[2]["error"]["code"] == "state_store_unavailable" and got[3] == "[DONE]"
    monkeypatch.undo()
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == len(PROMPT) + 2


# --- disconnects: an ASGI harness that sees exactly what was sent and when the client goes --------------------


@pytest.fixture(params=[1, None], ids=["token by token", "in groups"])
async def app(make_settings: SettingsFactory, request: pytest.FixtureRequest) -> AsyncIterator[FastAPI]:
    """Streams hand their tokens out one by one (a send per token, so a client can go away after any count of
    them) or in the default groups (a send per group)."""
    group = {} if request.param is None else {"stream_group_tokens": request.param}
    application = create_app(make_settings(**group))
    async with application.router.lifespan_context(application):
        yield application


async def stream_then_disconnect(
    app: FastAPI, path: str, body: dict[str, Any], keep: int, stop_reading: bool
) -> list[dict[str, Any]]:
    """POST a streamed generation and go away once `keep` token events (or, when a send carries several, the first
    send that reaches `keep`) have been sent: at once (the connection closes) or, with stop_reading, by no longer
    reading so that the next send blocks until the disconnect. Returns the token events whose sends completed."""
    raw = json.dumps(body).encode()
    disconnect = asyncio.Event()
    decoder = SSEDecoder()
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        tokens = [json.loads(e.data) for e in decoder.feed(message.get("body", b"")) if e.data.startswith('{"token"')]
        if len(sent) >= keep and tokens and stop_reading:
            disconnect.set()
            await asyncio.Event().wait()  # never returns: this send is cut off by the disconnect
        sent.extend(tokens)
        if len(sent) >= keep and not stop_reading:
            disconnect.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


@pytest.mark.parametrize("stop_reading", [False, True])
@pytest.mark.parametrize("keep", [1, 5])
async def test_disconnect_leaves_the_session_at_the_tokens_sent(app: FastAPI, stop_reading: bool, keep: int) -> None:
    engine = app.state.engine
    record, _ = await engine.create_session(text=PROMPT)
    sid = record.session_id
    sent = await stream_then_disconnect(
        app, f"/v1/sessions/{sid}/generate", {"max_tokens": 1000, "temperature": 0, "stream": True}, keep, stop_reading
    )
    grouped = engine.config.stream_group_tokens > 1
    assert keep <= len(sent) < keep + engine.config.stream_group_tokens if grouped else len(sent) == keep
    position = (await engine.get_session(sid)).position
    assert position == len(PROMPT) + len(sent) == sent[-1]["position"]  # exactly the tokens sent, no more
    # And the state is that of exactly those tokens.
    text = "".join(t["token"] for t in sent)
    after = await engine.session_predict(sid, text="a", top_k=5)
    whole = await engine.predict(text=PROMPT + text + "a", top_k=5)
    assert [t.id for t in after.next] == [t.id for t in whole.next]
    assert engine.metrics.streams_in_progress._value.get() == 0


async def test_a_disconnect_puts_the_session_back_even_when_the_engine_is_slow_to_let_go(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sse-starlette cancels a stream whose client went away in an anyio task group, which raises the cancellation
    again at every await: the put-back must still run to its end when it has to wait for the engine (here 50 ms,
    as under load) before writing the session back."""
    stop_stream = Batcher.stop_stream

    async def slow_to_let_go(self: Batcher, row: StreamRow) -> None:
        await asyncio.sleep(0.05)
        await stop_stream(self, row)

    monkeypatch.setattr(Batcher, "stop_stream", slow_to_let_go)
    engine = app.state.engine
    record, _ = await engine.create_session(text=PROMPT)
    sid = record.session_id
    sent = await stream_then_disconnect(
        app, f"/v1/sessions/{sid}/generate", {"max_tokens": 1000, "temperature": 0, "stream": True}, 1, False
    )
    assert sent
    await asyncio.sleep(0.3)  # a row nobody stopped would go on writing its window of tokens meanwhile
    assert (await engine.get_session(sid)).position == len(PROMPT) + len(sent) == sent[-1]["position"]
    assert engine.metrics.streams_in_progress._value.get() == 0


# --- continuous batching --------------------------------------------------------------------------------------


async def test_64_concurrent_streams_share_batches(app_factory: Any) -> None:
    async with app_factory(max_batch_size=64, max_batch_delay_ms=0) as client:
        engine = client.engine
        histogram = engine.metrics.batch_size
        count0, sum0 = histogram._sum.get(), sum(b.get() for b in histogram._buckets)
        batches = engine.stats().batches
        bodies = [{"text": PROMPT, "max_tokens": 40, "temperature": 0.9, "seed": s, "stream": True} for s in range(64)]
        responses = await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
        streams = [events(r.text) for r in responses]
        assert all(s[-1] == "[DONE]" and len(s) == 42 for s in streams)
        tokens = 64 * 40
        ran = engine.stats().batches - batches
        rows = histogram._sum.get() - count0
        observed = sum(b.get() for b in histogram._buckets) - sum0
        assert observed == ran and rows == tokens + 64  # every token step and prompt went through a batch
        assert rows / ran > 16  # streams advanced together: tens of rows per batch (about 64 when idle)
        metrics = (await client.get("/metrics")).text
        assert 'lstm_serve_tokens_total{kind="generated"}' in metrics
        assert "lstm_serve_time_to_first_token_seconds_count 64.0" in metrics
        assert "lstm_serve_streams_in_progress 0.0" in metrics
