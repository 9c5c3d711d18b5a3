"""A Python client for the lstm-serve HTTP API, synchronous (`Client`) and asynchronous (`AsyncClient`).

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        print(client.predict(text="To be, or not to ").next[0].token)
        with client.create_session(text="ROMEO:\\n") as session:  # deleted again on leaving the block
            stream = session.stream(max_tokens=200, temperature=0.8, seed=1)
            for event in stream:
                print(event.token, end="", flush=True)
            print(stream.result)  # Generation(text=..., tokens=[...], finish_reason="length", position=...)

`AsyncClient` mirrors it: `async with AsyncClient(url) as client:`, `async with client.create_session() as s:`
(or `s = await client.create_session()`), `await s.generate(...)`, `async for event in s.stream(...)`.

Every non-2xx answer raises `LstmServeError` carrying the server's error code; so does an error event in the
middle of a stream. Network failures surface as httpx's own exceptions (httpx.TransportError).

The requests and the reading of responses live once, in `_Call` builders and parsers shared by both clients;
the sync and async classes only do the I/O.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
_MISSING_STATUSES = frozenset({404, 410})  # a session already gone: fine when deleting on context exit


# --- errors ---------------------------------------------------------------------------------------------------


class LstmServeError(Exception):
    """The server refused or failed a request: its HTTP status and the `{"error": {"code", "message"}}` body.

    `status` is the HTTP status of the response that carried the error (200 for an error event mid-stream).
    `retry_after` is the Retry-After header in seconds, when the server sent one (429, 503). Codes the client
    itself raises: `invalid_response` (a 2xx body it cannot read) and `incomplete_stream` (a stream that ended
    without its final event).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details: dict[str, Any] = dict(details or {})


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_body(status: int, body: object, retry_after: float | None = None) -> LstmServeError:
    """The error a response body describes; tolerant of bodies that are not the server's shape (a proxy's)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        details = error.get("details")
        return LstmServeError(
            status,
            str(error.get("code") or f"http_{status}"),
            str(error.get("message") or "no message"),
            retry_after,
            details if isinstance(details, dict) else None,
        )
    if isinstance(error, str):  # the V2 inference routes answer {"error": "..."}, as Triton does
        return LstmServeError(status, f"http_{status}", error, retry_after)
    text = json.dumps(body) if body is not None else "no body"
    return LstmServeError(status, f"http_{status}", text[:500], retry_after)


def error_from_response(response: httpx.Response) -> LstmServeError:
    """The LstmServeError for a non-2xx response whose body has been read."""
    try:
        body: object = response.json()
    except ValueError:  # not JSON (an HTML error page, an empty body)
        body = {"error": response.text[:500] or response.reason_phrase}
    return error_from_body(response.status_code, body, _retry_after(response.headers.get("Retry-After")))


# --- results --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextToken:
    token: str
    id: int
    prob: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """The most likely next tokens (most likely first) after the input; `session_id` None when stateless."""

    next: list[NextToken]
    position: int
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    position: int
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation: `finish_reason` is e.g. "length" or "stop"; `position` is the session's after it."""

    text: str
    tokens: list[int]
    finish_reason: str
    position: int


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token as it streams; `position` is the session's position after it."""

    token: str
    id: int
    position: int


@dataclass(frozen=True, slots=True)
class _SessionCreated:
    session_id: str
    position: int
    expires_at: datetime | None
    next: list[NextToken] | None


def _time(value: object) -> datetime:
    """An API timestamp: ISO 8601 (what the server sends) or Unix seconds, as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"not a timestamp: {value!r}")


def _next_tokens(raw: object) -> list[NextToken]:
    if not isinstance(raw, list):
        raise ValueError(f"'next' must be a list, got {raw!r}")
    return [NextToken(token=str(t["token"]), id=int(t["id"]), prob=float(t["prob"])) for t in raw]


def _object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError("the response body is not a JSON object")
    return body


def _prediction(body: Mapping[str, Any]) -> Prediction:
    session_id = body.get("session_id")
    return Prediction(
        next=_next_tokens(body["next"]),
        position=int(body["position"]),
        session_id=None if session_id is None else str(session_id),
    )


def _session_info(body: Mapping[str, Any]) -> SessionInfo:
    ttl = body.get("ttl_seconds")
    return SessionInfo(
        session_id=str(body["session_id"]),
        position=int(body["position"]),
        created_at=_time(body["created_at"]),
        last_used_at=_time(body["last_used_at"]),
        expires_at=_time(body["expires_at"]),
        ttl_seconds=None if ttl is None else float(ttl),
    )


def _session_created(body: Mapping[str, Any]) -> _SessionCreated:
    nxt = body.get("next")
    expires = body.get("expires_at")
    return _SessionCreated(
        session_id=str(body["session_id"]),
        position=int(body["position"]),
        expires_at=None if expires is None else _time(expires),
        next=None if nxt is None else _next_tokens(nxt),
    )


def _generation(body: Mapping[str, Any], tokens: list[int] | None = None) -> Generation:
    ids = tokens if tokens is not None else [int(t) for t in body["tokens"]]
    return Generation(
        text=str(body["text"]), tokens=ids, finish_reason=str(body["finish_reason"]), position=int(body["position"])
    )


# --- server-sent events ---------------------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental text/event-stream parser (the WHATWG HTML "event stream interpretation"), fed raw bytes.

    Chunks may split anywhere, inside a UTF-8 character or between the CR and LF of a line end. Comments
    (keep-alive pings) are skipped; an event without data lines is not dispatched; an event left unterminated
    at the end of the stream is discarded, as the specification requires.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""  # the current incomplete line
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Events completed by this chunk, in order."""
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        # A CR at the very end may be the first half of a CRLF: wait for the next chunk to know.
        held_cr = buffer.endswith("\r")
        if held_cr:
            buffer = buffer[:-1]
        *lines, rest = _LINE_END.split(buffer)
        self._buffer = rest + ("\r" if held_cr else "")
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(data="\n".join(data), event=event or "message", id=self._last_id, retry=self._retry)


class _GenerationProtocol:
    """The generate stream's events: tokens, then one final event, then `[DONE]`; or an error event.

    Fed raw chunks; returns the token events each completes. An error event is raised only after the tokens
    before it in the same chunk have been handed out, by `finished()`.
    """

    def __init__(self, status: int, on_result: Callable[[Generation], None]) -> None:
        self._status = status
        self._on_result = on_result
        self._decoder = SSEDecoder()
        self._ids: list[int] = []
        self._error: LstmServeError | None = None
        self.result: Generation | None = None
        self.done = False  # [DONE] seen, or an error

    def feed(self, chunk: bytes) -> list[TokenEvent]:
        tokens: list[TokenEvent] = []
        for event in self._decoder.feed(chunk):
            if self.done:
                break
            token = self._handle(event.data)
            if token is not None:
                tokens.append(token)
        return tokens

    def finished(self) -> bool:
        """True once the stream is complete; raises the error event if one came."""
        if self._error is not None:
            raise self._error
        return self.done

    def end_of_stream(self) -> None:
        """The connection closed: fine after the final event (even without `[DONE]`), an error before it."""
        self.finished()
        if self.result is None:
            raise LstmServeError(
                self._status, "incomplete_stream", "the event stream ended before the generation's final event"
            )

    def _handle(self, data: str) -> TokenEvent | None:
        if data == "[DONE]":
            self.done = True
            if self.result is None:
                self._error = LstmServeError(
                    self._status,
                    "incomplete_stream",
                    "the event stream sent [DONE] before the generation's final event",
                )
            return None
        try:
            body = json.loads(data)
            if not isinstance(body, dict):
                raise ValueError("an event is not a JSON object")
            if "error" in body:
                self._error, self.done = error_from_body(self._status, body), True
                return None
            if self.result is not None:  # anything between the final event and [DONE] is ignored
                return None
            if "finish_reason" in body:
                self.result = _generation(body, tokens=list(self._ids))
                self._on_result(self.result)
                return None
            if "token" in body:
                event = TokenEvent(token=str(body["token"]), id=int(body["id"]), position=int(body["position"]))
                self._ids.append(event.id)
                return event
        except (ValueError, KeyError, TypeError) as e:
            self._error, self.done = LstmServeError(self._status, "invalid_response", f"bad stream event: {e}"), True
        return None  # an event of a kind this client does not know: skipped


# --- requests, shared by both clients -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API request and how to read its successful response."""

    method: str
    path: str
    body: Mapping[str, Any] | None
    parse: Callable[[httpx.Response], T]
    tolerate: frozenset[int] = field(default_factory=frozenset)  # statuses that count as success (parse sees them)


def _finish(call: _Call[T], response: httpx.Response) -> T:
    """The result of a call whose response body has been read, or the LstmServeError it carries."""
    if not response.is_success and response.status_code not in call.tolerate:
        raise error_from_response(response)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError) as e:
        raise LstmServeError(
            response.status_code, "invalid_response", f"{call.method} {call.path}: unexpected response body: {e}"
        ) from e


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields given; None means "not sent", so the server's default applies."""
    return {k: v for k, v in fields.items() if v is not None}


def _model_call() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/model", None, _object)


def _predict_call(text: str | None, tokens: Sequence[int] | None, top_k: int) -> _Call[Prediction]:
    body = _body(text=text, tokens=None if tokens is None else list(tokens), top_k=top_k)
    return _Call("POST", "/v1/predict", body, lambda r: _prediction(_object(r)))


def _create_session_call(
    text: str | None,
    tokens: Sequence[int] | None,
    top_k: int | None,
    ttl_seconds: float | None,
    state: Mapping[str, Any] | None,
) -> _Call[_SessionCreated]:
    body = _body(
        text=text,
        tokens=None if tokens is None else list(tokens),
        top_k=top_k,
        ttl_seconds=ttl_seconds,
        state=None if state is None else dict(state),
    )
    return _Call("POST", "/v1/sessions", body, lambda r: _session_created(_object(r)))


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "lstm-serve-client"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


class _SessionCalls:
    """What both Session classes share: identity, the last known position, and every request they make.

    Parsers update `position` as responses arrive, so it is always the latest position the server reported.
    """

    def __init__(self, created: _SessionCreated) -> None:
        self.id = created.session_id
        self.position = created.position
        self.expires_at = created.expires_at
        self.next = created.next  # the prediction made at creation, when text or tokens primed the session

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, position={self.position})"

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{self.id}"

    def _seen(self, position: int) -> None:
        self.position = position

    def _read_prediction(self, response: httpx.Response) -> Prediction:
        body = _object(response)
        result = _prediction(body)
        self._seen(result.position)
        if "expires_at" in body:
            self.expires_at = _time(body["expires_at"])
        return result

    def _read_info(self, response: httpx.Response) -> SessionInfo:
        info = _session_info(_object(response))
        self._seen(info.position)
        self.expires_at = info.expires_at
        return info

    def _read_generation(self, response: httpx.Response) -> Generation:
        result = _generation(_object(response))
        self._seen(result.position)
        return result

    def _predict_call(
        self, text: str | None, tokens: Sequence[int] | None, top_k: int, expected_position: int | None
    ) -> _Call[Prediction]:
        body = _body(
            text=text, tokens=None if tokens is None else list(tokens), top_k=top_k, expected_position=expected_position
        )
        return _Call("POST", f"{self._path}/predict", body, self._read_prediction)

    def _generate_body(
        self,
        max_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str] | None,
        stream: bool,
    ) -> dict[str, Any]:
        return {
            **_body(
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                stop=None if stop is None else list(stop),
            ),
            "stream": stream,
        }

    def _generate_call(
        self,
        max_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str] | None,
    ) -> _Call[Generation]:
        body = self._generate_body(max_tokens, temperature, top_k, top_p, seed, stop, stream=False)
        return _Call("POST", f"{self._path}/generate", body, self._read_generation)

    def _stream_protocol(self, status: int) -> _GenerationProtocol:
        return _GenerationProtocol(status, lambda g: self._seen(g.position))

    def _info_call(self) -> _Call[SessionInfo]:
        return _Call("GET", self._path, None, self._read_info)

    def _reset_call(self) -> _Call[SessionInfo]:
        return _Call("POST", f"{self._path}/reset", None, self._read_info)

    def _fork_call(self, ttl_seconds: float | None) -> _Call[_SessionCreated]:
        return _Call(
            "POST", f"{self._path}/fork", _body(ttl_seconds=ttl_seconds), lambda r: _session_created(_object(r))
        )

    def _export_call(self) -> _Call[dict[str, Any]]:
        return _Call("GET", f"{self._path}/state", None, _object)

    def _delete_call(self, missing_ok: bool) -> _Call[None]:
        return _Call("DELETE", self._path, None, lambda r: None, _MISSING_STATUSES if missing_ok else frozenset())


# --- synchronous ----------------------------------------------------------------------------------------------


class TokenStream:
    """The token events of a streamed generation, read lazily; `.result` is the Generation once it has ended.

    Iterate it (once). Leaving a `with` block or calling `close()` early closes the connection.
    """

    def __init__(
        self,
        open_response: Callable[[], AbstractContextManager[httpx.Response]],
        protocol: Callable[[int], _GenerationProtocol],
    ) -> None:
        self._open = open_response
        self._protocol = protocol
        self._events = self._read()
        self.result: Generation | None = None

    def _read(self) -> Generator[TokenEvent, None, None]:
        with self._open() as response:
            if not response.is_success:
                response.read()
                raise error_from_response(response)
            protocol = self._protocol(response.status_code)
            for chunk in response.iter_bytes():
                yield from protocol.feed(chunk)
                if protocol.finished():
                    break
            else:
                protocol.end_of_stream()
            self.result = protocol.result

    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        return next(self._events)

    def collect(self) -> Generation:
        """Read the rest of the stream and return the finished Generation."""
        for _ in self:
            pass
        assert self.result is not None  # a stream only ends cleanly after its final event
        return self.result

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session(_SessionCalls):
    """A server-side session (made by `Client.create_session` or `fork`); `with session:` deletes it on exit."""

    def __init__(self, client: Client, created: _SessionCreated) -> None:
        super().__init__(created)
        self._client = client

    def predict(
        self,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        top_k: int = 5,
        expected_position: int | None = None,
    ) -> Prediction:
        """Feed text (or token ids) and return the most likely next tokens. With `expected_position`, the server
        applies it only if the session is there (else 409 position_conflict, nothing changed)."""
        return self._client._run(self._predict_call(text, tokens, top_k, expected_position))

    def generate(
        self,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        """Generate up to max_tokens tokens and return them at once (None: the server's default)."""
        return self._client._run(self._generate_call(max_tokens, temperature, top_k, top_p, seed, stop))

    def stream(
        self,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> TokenStream:
        """Like generate, but yields each token as the server produces it (server-sent events)."""
        body = self._generate_body(max_tokens, temperature, top_k, top_p, seed, stop, stream=True)
        return TokenStream(lambda: self._client._stream("POST", f"{self._path}/generate", body), self._stream_protocol)

    def fork(self, ttl_seconds: float | None = None) -> Session:
        """A new session starting from a copy of this one's state."""
        return Session(self._client, self._client._run(self._fork_call(ttl_seconds)))

    def export_state(self) -> dict[str, Any]:
        """The session's LSTM state, portable to `create_session(state=...)` on a server with the same model."""
        return self._client._run(self._export_call())

    def reset(self) -> SessionInfo:
        """Back to position 0 and a zero state."""
        return self._client._run(self._reset_call())

    def info(self) -> SessionInfo:
        return self._client._run(self._info_call())

    def delete(self, missing_ok: bool = False) -> None:
        """Delete the session; with missing_ok, one already gone (404/410) is not an error."""
        self._client._run(self._delete_call(missing_ok))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete(missing_ok=True)


class Client:
    """Synchronous client. `transport` lets tests plug in httpx.MockTransport (or a WSGI transport)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=_headers(api_key, headers)
        )

    def _run(self, call: _Call[T]) -> T:
        return _finish(call, self._http.request(call.method, call.path, json=call.body))

    def _stream(self, method: str, path: str, body: Mapping[str, Any]) -> AbstractContextManager[httpx.Response]:
        return self._http.stream(method, path, json=body, headers={"Accept": "text/event-stream"})

    def model(self) -> dict[str, Any]:
        """The loaded model's description (GET /v1/model)."""
        return self._run(_model_call())

    def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, top_k: int = 5) -> Prediction:
        """Stateless: the most likely next tokens after `text` (or token ids), from a zero state."""
        return self._run(_predict_call(text, tokens, top_k))

    def create_session(
        self,
        text: str | None = None,
        ttl_seconds: float | None = None,
        state: Mapping[str, Any] | None = None,
        *,
        tokens: Sequence[int] | None = None,
        top_k: int | None = None,
    ) -> Session:
        """A new session, optionally restored from an exported `state` and primed with text or tokens (then
        `session.next` holds the prediction after them)."""
        return Session(self, self._run(_create_session_call(text, tokens, top_k, ttl_seconds, state)))

    def session(self, session_id: str, position: int = 0) -> Session:
        """A handle on an existing session by id (nothing is sent; call `info()` to learn its position)."""
        return Session(self, _SessionCreated(session_id, position, None, None))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- asynchronous ---------------------------------------------------------------------------------------------


class AsyncTokenStream:
    """`async for` over a streamed generation's token events; `.result` is the Generation once it has ended.

    Use `async with session.stream(...) as events:` when you may stop early, so the connection is closed.
    """

    def __init__(
        self,
        open_response: Callable[[], AbstractAsyncContextManager[httpx.Response]],
        protocol: Callable[[int], _GenerationProtocol],
    ) -> None:
        self._open = open_response
        self._protocol = protocol
        self._events = self._read()
        self.result: Generation | None = None

    async def _read(self) -> AsyncGenerator[TokenEvent, None]:
        async with self._open() as response:
            if not response.is_success:
                await response.aread()
                raise error_from_response(response)
            protocol = self._protocol(response.status_code)
            async for chunk in response.aiter_bytes():
                for token in protocol.feed(chunk):
                    yield token
                if protocol.finished():
                    break
            else:
                protocol.end_of_stream()
            self.result = protocol.result

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        return await anext(self._events)

    async def collect(self) -> Generation:
        """Read the rest of the stream and return the finished Generation."""
        async for _ in self:
            pass
        assert self.result is not None  # a stream only ends cleanly after its final event
        return self.result

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncTokenStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class PendingSession:
    """A session being created: `await` it for the AsyncSession, or `async with` it to delete it on exit."""

    def __init__(self, create: Callable[[], Awaitable[AsyncSession]]) -> None:
        self._create = create
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._make().__await__()

    async def _make(self) -> AsyncSession:
        return await self._create()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._create()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.delete(missing_ok=True)


class AsyncSession(_SessionCalls):
    """The asynchronous Session: the same methods, awaited; `async with session:` deletes it on exit."""

    def __init__(self, client: AsyncClient, created: _SessionCreated) -> None:
        super().__init__(created)
        self._client = client

    async def predict(
        self,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        top_k: int = 5,
        expected_position: int | None = None,
    ) -> Prediction:
        """See Session.predict."""
        return await self._client._run(self._predict_call(text, tokens, top_k, expected_position))

    async def generate(
        self,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        """See Session.generate."""
        return await self._client._run(self._generate_call(max_tokens, temperature, top_k, top_p, seed, stop))

    def stream(
        self,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> AsyncTokenStream:
        """See Session.stream; iterate with `async for`."""
        body = self._generate_body(max_tokens, temperature, top_k, top_p, seed, stop, stream=True)
        return AsyncTokenStream(
            lambda: self._client._stream("POST", f"{self._path}/generate", body), self._stream_protocol
        )

    def fork(self, ttl_seconds: float | None = None) -> PendingSession:
        """See Session.fork; `await` it, or `async with` it."""

        async def create() -> AsyncSession:
            return AsyncSession(self._client, await self._client._run(self._fork_call(ttl_seconds)))

        return PendingSession(create)

    async def export_state(self) -> dict[str, Any]:
        return await self._client._run(self._export_call())

    async def reset(self) -> SessionInfo:
        return await self._client._run(self._reset_call())

    async def info(self) -> SessionInfo:
        return await self._client._run(self._info_call())

    async def delete(self, missing_ok: bool = False) -> None:
        await self._client._run(self._delete_call(missing_ok))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete(missing_ok=True)


class AsyncClient:
    """Asynchronous client; `transport` takes httpx.MockTransport or httpx.ASGITransport(app) in tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers=_headers(api_key, headers)
        )

    async def _run(self, call: _Call[T]) -> T:
        return _finish(call, await self._http.request(call.method, call.path, json=call.body))

    def _stream(self, method: str, path: str, body: Mapping[str, Any]) -> AbstractAsyncContextManager[httpx.Response]:
        return self._http.stream(method, path, json=body, headers={"Accept": "text/event-stream"})

    async def model(self) -> dict[str, Any]:
        """See Client.model."""
        return await self._run(_model_call())

    async def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, top_k: int = 5) -> Prediction:
        """See Client.predict."""
        return await self._run(_predict_call(text, tokens, top_k))

    def create_session(
        self,
        text: str | None = None,
        ttl_seconds: float | None = None,
        state: Mapping[str, Any] | None = None,
        *,
        tokens: Sequence[int] | None = None,
        top_k: int | None = None,
    ) -> PendingSession:
        """See Client.create_session; `await` it, or `async with` it to delete the session on exit."""

        async def create() -> AsyncSession:
            return AsyncSession(self, await self._run(_create_session_call(text, tokens, top_k, ttl_seconds, state)))

        return PendingSession(create)

    def session(self, session_id: str, position: int = 0) -> AsyncSession:
        """See Client.session."""
        return AsyncSession(self, _SessionCreated(session_id, position, None, None))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
