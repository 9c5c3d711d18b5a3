"""The synchronous client: `Client`, its `Session`s and their `TokenStream`s."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import httpx

from ._requests import (
    DEFAULT_TIMEOUT,
    T,
    _Call,
    _create_session_call,
    _finish,
    _headers,
    _model_call,
    _predict_call,
    _SessionCalls,
)
from .errors import error_from_response
from .results import Generation, Prediction, SessionInfo, TokenEvent, _SessionCreated
from .sse import _GenerationProtocol


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
