"""The asynchronous client: `AsyncClient`, its `AsyncSession`s (created through `PendingSession`) and their
`AsyncTokenStream`s."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
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
