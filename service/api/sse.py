"""Generation events as server-sent events: `data: <json>` per event, then `data: [DONE]`.

An error met midway (the session expired, the server is draining, a bug) is sent as one more event with the usual
error shape, then `data: [DONE]`: the status line went out with the first event. sse-starlette notices a client
that disconnects and cancels the stream; the generation then stops before its next step and its session keeps
exactly the tokens that were sent (service/engine/generation.py). On shutdown, streams get most of the server's
grace period to finish before they are cut.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any, Protocol

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Send

from service.api.errors import error_payload
from service.engine.generation import Event, Finished, Token

DONE = "[DONE]"
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "With `stream: true`: the events, as described in the body's `stream` field.",
    },
}


class Renderer(Protocol):
    """What a protocol sends for each generation event (any number of JSON payloads, possibly none)."""

    def token(self, token: Token) -> Iterable[dict[str, Any]]: ...

    def finished(self, result: Finished) -> Iterable[dict[str, Any]]: ...


def _event(payload: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=orjson.dumps(payload).decode())


_END = b"\r\n\r\n"  # sse-starlette's default line separator, twice: the end of one event


def _frame(payload: dict[str, Any]) -> bytes:
    """`_event(payload).encode()` without the detour through str: compact JSON is one line (orjson escapes any
    newline inside a string), so the event is exactly `data: <json>` and the separator."""
    return b"data: " + orjson.dumps(payload) + _END


def _render(group: list[Event], renderer: Renderer) -> bytes:
    """Every event of a group as one chunk: a client that lags behind the model gets the tokens that are ready
    in one write instead of one write per token."""
    return b"".join(
        _frame(payload)
        for event in group
        for payload in (renderer.token(event) if isinstance(event, Token) else renderer.finished(event))
    )


async def _events(
    groups: AsyncGenerator[list[Event], None], renderer: Renderer
) -> AsyncIterator[bytes | ServerSentEvent]:
    try:
        # aclosing: when the response stops early, the generation is closed at once, in this task, so it can
        # tell the events whose send was interrupted from those that went out.
        async with aclosing(groups) as stream:
            async for group in stream:
                chunk = _render(group, renderer)
                if chunk:
                    yield chunk
    except Exception as exc:  # the stream has started: the error can only be an event now
        yield _event(error_payload(exc))
    yield ServerSentEvent(data=DONE)


class _Response(EventSourceResponse):
    """sse-starlette's response; with no per-send timeout set (ours: none, the engine bounds every stream), a send
    is a plain `await send(...)`. The base class wraps every send, timeout or not, in an anyio cancel scope, which
    cost about a tenth of the event loop's time with 64 streams (one scope per token)."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True  # as the base class marks it: the stream then closes without a last send
            raise


def event_stream(
    groups: AsyncGenerator[list[Event], None], renderer: Renderer, shutdown_grace_s: float
) -> EventSourceResponse:
    """The response that streams a generation (`Generator.stream_groups`); `shutdown_grace_s`: the server's grace
    period at shutdown."""
    return _Response(_events(groups, renderer), shutdown_grace_period=0.9 * shutdown_grace_s)
