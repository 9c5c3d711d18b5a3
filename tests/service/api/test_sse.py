"""The SSE framing and response class (service/api/sse.py), in process."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api import sse
from service.api.generate import NativeEvents
from service.engine.generation import Event

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_frame_is_the_libraries_event_bytes(payload: dict[str, Any]) -> None:
    """Bytes built directly are exactly what sse-starlette encodes for the same JSON, newlines in strings too."""
    assert sse._frame(payload) == sse._event(payload).encode()
    assert sse._frame(payload) == ServerSentEvent(data=sse.orjson.dumps(payload).decode()).encode()


def test_the_send_override_is_in_effect() -> None:
    """The response class replaces sse-starlette's per-send wrapper and keeps its bookkeeping. If an sse-starlette
    release renames or drops either, the override would silently do nothing or lie: fail here."""
    assert "_send_with_timeout" in vars(EventSourceResponse)
    response = sse.event_stream(_no_groups(), NativeEvents(), 10.0)
    assert type(response) is sse._Response and response.send_timeout is None
    assert response._send_interrupted is False  # the base class's flag, read when the stream ends


async def test_a_failed_send_is_marked_interrupted() -> None:
    response = sse.event_stream(_no_groups(), NativeEvents(), 10.0)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await response._send_with_timeout(send, {"type": "http.response.body", "body": b"x", "more_body": True})
    assert sent and response._send_interrupted is False

    async def broken(message: Any) -> None:
        raise OSError("gone")

    with pytest.raises(OSError):
        await response._send_with_timeout(broken, {"type": "http.response.body", "body": b"x", "more_body": True})
    assert response._send_interrupted is True


async def _no_groups() -> AsyncGenerator[list[Event], None]:
    yield []
