"""The client's pure parts against exact server-shaped responses (httpx.MockTransport): SSE parsing, errors,
what each call sends and how it reads the answer. Protocol-shape tests; the server tests exercise it for real."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.client import (
    AsyncClient,
    Client,
    Generation,
    LstmServeError,
    NextToken,
    ServerSentEvent,
    SessionInfo,
    SSEDecoder,
    TokenEvent,
    error_from_response,
)

BASE = "http://lstm.test"
EXPIRES = "2030-01-02T03:04:05Z"
NEXT = [{"token": "e", "id": 7, "prob": 0.5}, {"token": "a", "id": 3, "prob": 0.25}]


def decode_all(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


# --- SSE decoding ---------------------------------------------------------------------------------------------


def test_sse_basic_fields() -> None:
    stream = (
        b": ping\r\n\r\ndata: one\r\n\r\nevent: custom\nid: 9\nretry: 50\ndata:two\ndata:  three\ndata\n\n"
        b"data: four\r\rdata: unterminated"
    )
    assert decode_all([stream]) == [
        ServerSentEvent("one"),
        ServerSentEvent("two\n three\n", event="custom", id="9", retry=50),
        ServerSentEvent("four", id="9", retry=50),  # the last event id persists, as the spec says
    ]


def test_sse_skips_events_without_data_and_unknown_fields() -> None:
    assert decode_all([b"event: x\n\nfoo: bar\n\n:comment\ndata: y\n\n"]) == [ServerSentEvent("y")]


def test_sse_strips_one_leading_bom_only() -> None:
    assert decode_all([b"\xef\xbb", b"\xbfdata: a\n\n"]) == [ServerSentEvent("a")]
    assert decode_all([b"data: \xef\xbb\xbfa\n\n"]) == [ServerSentEvent("\ufeffa")]


def test_sse_crlf_split_across_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("a"), ServerSentEvent("b")]


SAMPLE = (
    'data: {"token": "é", "id": 1}\r\n\r\n: ping - 2030-01-01 00:00:00\r\n\r\ndata: 漢字\rdata: x\r\r'
    "event: e\ndata: [DONE]\n\n"
).encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=12))
def test_sse_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SAMPLE)]
    chunks = [SAMPLE[a:b] for a, b in itertools.pairwise(bounds)]
    assert (
        decode_all(chunks)
        == decode_all([SAMPLE])
        == [
            ServerSentEvent('{"token": "é", "id": 1}'),
            ServerSentEvent("漢字\nx"),
            ServerSentEvent("[DONE]", event="e"),
        ]
    )


# --- errors ---------------------------------------------------------------------------------------------------


def test_error_from_the_server_shape() -> None:
    body = {
        "error": {
            "code": "position_conflict",
            "message": "session 'x' is at position 5",
            "details": {"expected_position": 4, "position": 5},
        }
    }
    error = error_from_response(httpx.Response(409, json=body))
    assert (error.status, error.code, error.message, error.retry_after) == (
        409,
        "position_conflict",
        "session 'x' is at position 5",
        None,
    )
    assert error.details == {"expected_position": 4, "position": 5}
    assert "409 position_conflict" in str(error)


def test_error_retry_after_seconds_and_date() -> None:
    body = {"error": {"code": "too_many_sessions", "message": "full"}}
    assert error_from_response(httpx.Response(429, json=body, headers={"Retry-After": "7"})).retry_after == 7.0
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 120, tz=UTC)
    retry = error_from_response(httpx.Response(503, json=body, headers={"Retry-After": format_datetime(later, True)}))
    assert retry.retry_after is not None and 100 < retry.retry_after <= 120
    assert error_from_response(httpx.Response(503, json=body, headers={"Retry-After": "soon"})).retry_after is None


@pytest.mark.parametrize(
    ("response", "code", "message"),
    [
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "http_502", "<html>Bad Gateway</html>"),
        (httpx.Response(500), "http_500", "Internal Server Error"),
        (httpx.Response(400, json={"error": "input 'x': bad shape"}), "http_400", "input 'x': bad shape"),
        (httpx.Response(422, json={"detail": "nope"}), "http_422", '{"detail": "nope"}'),
        (httpx.Response(404, json={"error": {"message": "gone"}}), "http_404", "gone"),
    ],
)
def test_error_from_other_shapes(response: httpx.Response, code: str, message: str) -> None:
    error = error_from_response(response)
    assert (error.status, error.code, error.message) == (response.status_code, code, message)


# --- a fake server --------------------------------------------------------------------------------------------


def sse(*events: object) -> list[bytes]:
    """Events framed exactly as sse-starlette frames them (CRLF), with a keep-alive ping in between."""
    frames = [b": ping - 2030-01-01 00:00:00.000000+00:00\r\n\r\n"]
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        frames.append(f"data: {data}\r\n\r\n".encode())
    # Deliver in awkward pieces so events straddle chunks.
    blob = b"".join(frames)
    return [blob[i : i + 7] for i in range(0, len(blob), 7)]


TOKENS = [{"token": "a", "id": 3, "position": 11}, {"token": "b", "id": 4, "position": 12}]
FINAL = {"finish_reason": "length", "text": "ab", "position": 12}


class FakeServer:
    """Routes to canned answers, recording every request; `stream` chunks are SSE bodies for /generate."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.stream: list[bytes] = sse(*TOKENS, FINAL, "[DONE]")
        self.stream_status = 200
        self.missing = False  # the session has gone: every session route answers 404

    def answer(self, request: httpx.Request) -> tuple[int, Any, dict[str, str]]:
        path, method = request.url.path, request.method
        body: Any = json.loads(request.content) if request.content else {}
        info = {
            "session_id": "s1",
            "position": 10,
            "created_at": "2030-01-01T00:00:00Z",
            "last_used_at": 1893456000.5,
            "expires_at": EXPIRES,
            "ttl_seconds": 600.0,
        }
        if self.missing and path.startswith("/v1/sessions/"):
            return 404, {"error": {"code": "session_not_found", "message": "session 's1' does not exist"}}, {}
        match method, path:
            case "GET", "/v1/model":
                return 200, {"name": "shakespeare", "vocab_size": 76}, {}
            case "POST", "/v1/predict":
                return 200, {"next": NEXT, "position": len(body.get("text") or body.get("tokens"))}, {}
            case "POST", "/v1/sessions":
                if body.get("ttl_seconds") == 0:
                    return 429, {"error": {"code": "too_many_sessions", "message": "full"}}, {"Retry-After": "3"}
                extra = {"next": NEXT} if "text" in body else {}
                return (
                    201,
                    {"session_id": "s1", "position": len(body.get("text", "")), "expires_at": EXPIRES, **extra},
                    {},
                )
            case "POST", "/v1/sessions/s1/predict":
                if body.get("expected_position") not in (None, 5):
                    return (
                        409,
                        {
                            "error": {
                                "code": "position_conflict",
                                "message": "at 5",
                                "details": {"expected_position": body["expected_position"], "position": 5},
                            }
                        },
                        {},
                    )
                return (
                    200,
                    {"session_id": "s1", "position": 5 + len(body["text"]), "expires_at": EXPIRES, "next": NEXT},
                    {},
                )
            case "POST", "/v1/sessions/s1/generate":
                return 200, {"text": "ab", "tokens": [3, 4], "finish_reason": "stop", "position": 12}, {}
            case "GET", "/v1/sessions/s1":
                return 200, info, {}
            case "POST", "/v1/sessions/s1/reset":
                return 200, {**info, "position": 0}, {}
            case "POST", "/v1/sessions/s1/fork":
                return 201, {**info, "session_id": "s2", "forked_from": "s1"}, {}
            case "GET", "/v1/sessions/s1/state":
                return (
                    200,
                    {
                        "model_fingerprint": "sha256:ab",
                        "position": 10,
                        "shape": [2, 4],
                        "dtype": "float32",
                        "h": "AAAA",
                        "c": "AAAA",
                    },
                    {},
                )
            case "DELETE", "/v1/sessions/s1" | "/v1/sessions/s2":
                return 204, None, {}
        return 404, {"error": {"code": "not_found", "message": f"no route {method} {path}"}}, {}

    def is_stream(self, request: httpx.Request) -> bool:
        return request.url.path.endswith("/generate") and json.loads(request.content).get("stream") is True

    def sync(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.is_stream(request):
            return httpx.Response(
                self.stream_status, headers={"content-type": "text/event-stream"}, content=iter(self.stream)
            )
        status, body, headers = self.answer(request)
        return httpx.Response(status, json=body, headers=headers) if body is not None else httpx.Response(status)

    async def asynchronous(self, request: httpx.Request) -> httpx.Response:
        if self.is_stream(request):
            self.requests.append(request)

            async def chunks() -> AsyncIterator[bytes]:
                for chunk in self.stream:
                    yield chunk

            return httpx.Response(self.stream_status, headers={"content-type": "text/event-stream"}, content=chunks())
        return self.sync(request)

    def sent(self, index: int = -1) -> tuple[str, str, Any]:
        request = self.requests[index]
        return request.method, request.url.path, json.loads(request.content) if request.content else None


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer) -> Iterator[Client]:
    with Client(BASE, api_key="k3y", transport=httpx.MockTransport(server.sync)) as c:
        yield c


# --- the sync client ------------------------------------------------------------------------------------------


def test_stateless_predict_and_model(client: Client, server: FakeServer) -> None:
    result = client.predict(text="To be", top_k=2)
    assert result.next == [NextToken("e", 7, 0.5), NextToken("a", 3, 0.25)]
    assert result.position == 5 and result.session_id is None
    assert server.sent() == ("POST", "/v1/predict", {"text": "To be", "top_k": 2})
    assert server.requests[-1].headers["authorization"] == "Bearer k3y"
    assert client.predict(tokens=(1, 2)).position == 2
    assert server.sent()[2] == {"tokens": [1, 2], "top_k": 5}
    assert client.model() == {"name": "shakespeare", "vocab_size": 76}


def test_no_api_key_sends_no_authorization(server: FakeServer) -> None:
    with Client(BASE, transport=httpx.MockTransport(server.sync)) as c:
        c.model()
    assert "authorization" not in server.requests[-1].headers


def test_session_lifecycle(client: Client, server: FakeServer) -> None:
    with client.create_session(text="ROMEO", ttl_seconds=60) as session:
        assert server.sent() == ("POST", "/v1/sessions", {"text": "ROMEO", "ttl_seconds": 60})
        assert (session.id, session.position) == ("s1", 5)
        assert session.expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert session.next is not None and session.next[0].token == "e"

        assert session.predict("abc", expected_position=5).position == 8
        assert server.sent() == ("POST", "/v1/sessions/s1/predict", {"text": "abc", "top_k": 5, "expected_position": 5})
        assert session.position == 8

        info = session.info()
        assert info == SessionInfo(
            "s1",
            10,
            datetime(2030, 1, 1, tzinfo=UTC),
            datetime.fromtimestamp(1893456000.5, tz=UTC),
            session.expires_at,
            600.0,
        )
        assert session.position == 10
        assert session.reset().position == 0 and session.position == 0

        state = session.export_state()
        assert state["model_fingerprint"] == "sha256:ab"
        with client.create_session(state=state) as restored:
            assert server.sent()[2] == {"state": state}
            assert restored.next is None

        fork = session.fork(ttl_seconds=5)
        assert server.sent() == ("POST", "/v1/sessions/s1/fork", {"ttl_seconds": 5})
        assert (fork.id, fork.position) == ("s2", 10)
        fork.delete()
    assert server.sent() == ("DELETE", "/v1/sessions/s1", None)


def test_context_exit_ignores_a_session_already_gone(client: Client, server: FakeServer) -> None:
    with client.create_session() as session:
        server.missing = True
    assert server.sent()[:2] == ("DELETE", "/v1/sessions/s1")
    with pytest.raises(LstmServeError) as info:
        session.delete()
    assert (info.value.status, info.value.code) == (404, "session_not_found")


def test_errors_raise_with_code_details_and_retry_after(client: Client) -> None:
    session = client.session("s1", position=5)
    with pytest.raises(LstmServeError) as conflict:
        session.predict("x", expected_position=4)
    assert (conflict.value.status, conflict.value.code) == (409, "position_conflict")
    assert conflict.value.details == {"expected_position": 4, "position": 5}
    assert session.position == 5  # unchanged by a refused request
    with pytest.raises(LstmServeError) as full:
        client.create_session(ttl_seconds=0)
    assert (full.value.status, full.value.code, full.value.retry_after) == (429, "too_many_sessions", 3.0)


def test_unreadable_success_body_is_invalid_response(server: FakeServer) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text="not json"))
    with Client(BASE, transport=transport) as c, pytest.raises(LstmServeError) as info:
        c.predict(text="a")
    assert (info.value.status, info.value.code) == (200, "invalid_response")


def test_generate(client: Client, server: FakeServer) -> None:
    session = client.session("s1", position=10)
    result = session.generate(max_tokens=2, temperature=0.5, top_p=0.9, seed=2**64 - 1, stop=["\n"])
    assert result == Generation("ab", [3, 4], "stop", 12)
    assert server.sent()[2] == {
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 2**64 - 1,
        "stop": ["\n"],
        "stream": False,
    }
    assert session.position == 12


def test_stream(client: Client, server: FakeServer) -> None:
    session = client.session("s1", position=10)
    stream = session.stream(max_tokens=2, top_k=3)
    assert server.requests == []  # nothing is sent until the stream is read
    events = list(stream)
    assert events == [TokenEvent("a", 3, 11), TokenEvent("b", 4, 12)]
    assert stream.result == Generation("ab", [3, 4], "length", 12)
    assert session.position == 12
    assert server.sent()[2] == {"max_tokens": 2, "top_k": 3, "stream": True}
    assert server.requests[-1].headers["accept"] == "text/event-stream"


def test_stream_collect_and_missing_done(client: Client, server: FakeServer) -> None:
    server.stream = sse(*TOKENS, FINAL)  # the connection closes without [DONE]: still complete
    assert client.session("s1").stream().collect().text == "ab"


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ((TOKENS[0], {"error": {"code": "internal_error", "message": "boom"}}, "[DONE]"), "internal_error"),
        ((TOKENS[0],), "incomplete_stream"),
        ((TOKENS[0], "[DONE]"), "incomplete_stream"),
        ((TOKENS[0], "{not json"), "invalid_response"),
    ],
)
def test_stream_failures_raise_after_the_tokens_before_them(
    client: Client, server: FakeServer, events: tuple[object, ...], code: str
) -> None:
    server.stream = sse(*events)
    stream = client.session("s1").stream()
    got: list[TokenEvent] = []
    with pytest.raises(LstmServeError) as info:
        for event in stream:
            got.append(event)
    assert got == [TokenEvent("a", 3, 11)]
    assert (info.value.status, info.value.code) == (200, code)
    assert stream.result is None


def test_stream_error_status_before_any_event(client: Client, server: FakeServer) -> None:
    server.stream = [json.dumps({"error": {"code": "session_not_found", "message": "gone"}}).encode()]
    server.stream_status = 404
    with pytest.raises(LstmServeError) as info:
        next(iter(client.session("s1").stream()))
    assert (info.value.status, info.value.code, info.value.message) == (404, "session_not_found", "gone")


def test_stream_can_be_closed_early(client: Client) -> None:
    with client.session("s1").stream() as stream:
        assert next(stream) == TokenEvent("a", 3, 11)
    with pytest.raises(StopIteration):
        next(stream)


# --- the async client -----------------------------------------------------------------------------------------


def async_client(server: FakeServer) -> AsyncClient:
    return AsyncClient(BASE, api_key="k3y", transport=httpx.MockTransport(server.asynchronous))


async def test_async_session_flow(server: FakeServer) -> None:
    async with async_client(server) as client:
        assert (await client.predict(text="To be")).position == 5
        async with client.create_session(text="ROMEO") as session:
            assert session.position == 5
            assert (await session.predict("ab")).position == 7
            stream = session.stream(max_tokens=2)
            events = [event async for event in stream]
            assert events == [TokenEvent("a", 3, 11), TokenEvent("b", 4, 12)]
            assert stream.result is not None and stream.result.finish_reason == "length"
            assert session.position == 12
            assert (await session.generate(max_tokens=2)).tokens == [3, 4]
            assert (await session.info()).ttl_seconds == 600.0
            assert (await session.reset()).position == 0
            assert (await session.export_state())["dtype"] == "float32"
            async with session.fork() as fork:
                assert fork.id == "s2"
            assert server.sent() == ("DELETE", "/v1/sessions/s2", None)
            plain = await client.create_session()
            assert plain.next is None
        assert server.sent() == ("DELETE", "/v1/sessions/s1", None)
        assert (await client.model())["vocab_size"] == 76


async def test_async_stream_error_mid_stream(server: FakeServer) -> None:
    server.stream = sse(TOKENS[0], {"error": {"code": "draining", "message": "shutting down"}}, "[DONE]")
    async with async_client(server) as client:
        stream = client.session("s1").stream()
        got: list[TokenEvent] = []
        with pytest.raises(LstmServeError) as info:
            async for event in stream:
                got.append(event)
        assert got == [TokenEvent("a", 3, 11)] and info.value.code == "draining"


async def test_async_collect_close_and_missing_session(server: FakeServer) -> None:
    async with async_client(server) as client:
        assert (await client.session("s1").stream().collect()).position == 12
        async with client.session("s1").stream() as stream:
            assert await anext(stream) == TokenEvent("a", 3, 11)
        async with client.create_session():
            server.missing = True
        with pytest.raises(LstmServeError) as info:
            await client.session("s1").delete()
        assert info.value.status == 404
