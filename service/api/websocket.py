"""WebSocket /v1/sessions/{id}/stream: a session driven by JSON frames over one connection.

Client frames, handled strictly in order:
- `{"text": "..."}` (or `"tokens"`, with optional `top_k` and `expected_position`): fed like predict, answered
  `{"position", "next"}`;
- `{"generate": {...}}` (the generate body's fields, without `stream`): answered with one `{"token", "id",
  "position"}` frame per token, then a final `{"text", "tokens", "finish_reason", "position"}` frame.
A frame that cannot be served gets an error frame, `{"error": {"code", "message"}}`, and the socket stays usable.

One task reads frames into a queue while another serves them, so a close is seen at once even mid-generation: the
serving task is cancelled, the generation stops before its next step, and the session keeps exactly the tokens
whose frames were sent; a feed cut short changes nothing. Closing the socket never leaves a session half-updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import aclosing
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.api.access import SessionPath, check_owner, owner_tag_of
from service.api.deps import EngineDep, GeneratorDep, SettingsDep
from service.api.errors import error_payload
from service.api.generate import NativeEvents, sampling_params
from service.api.schemas import SessionPredictRequest, TokenProbability
from service.api.schemas_generate import GenerateFrame
from service.engine.engine import Engine
from service.engine.generation import Generator, Token
from service.errors import EngineError, InvalidInput

router = APIRouter(tags=["sessions"])
log = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 64  # frames received but not yet served; a client that floods more is disconnected
CLOSE_GONE = 4404  # application close code: the session does not exist
CLOSE_FLOODED = 1008  # policy violation
CLOSE_ERROR = 1011  # internal error


class _Flooded(Exception):
    """The client sent more frames than are queued for serving."""


@router.websocket("/v1/sessions/{id}/stream")
async def session_stream(
    websocket: WebSocket, session_id: SessionPath, engine: EngineDep, generator: GeneratorDep, settings: SettingsDep
) -> None:
    await websocket.accept()
    try:
        check_owner(websocket, session_id)  # another key's session is "not found", as on every route
        await engine.get_session(session_id)
    except EngineError as exc:
        await websocket.send_json(error_payload(exc, engine.metrics))
        await websocket.close(CLOSE_GONE, "no such session")
        return
    frames: asyncio.Queue[str | bytes] = asyncio.Queue(MAX_QUEUED_FRAMES)
    reader = asyncio.create_task(_read(websocket, frames))
    server = asyncio.create_task(_serve(websocket, frames, engine, generator, session_id, settings.max_request_bytes))
    try:
        await asyncio.wait({reader, server}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, server):
            task.cancel()
        # wait, not gather: it lets them finish their cleanup (a generation's rollback) and, should this task be
        # cancelled meanwhile, raises this task's own cancellation rather than one of theirs.
        await asyncio.wait({reader, server})
    # Here the client has closed (nothing to do), flooded us, or serving failed in a way no error frame covers.
    read, served = (None if t.cancelled() else t.exception() for t in (reader, server))
    if isinstance(read, _Flooded):
        await _close(websocket, CLOSE_FLOODED, f"more than {MAX_QUEUED_FRAMES} frames waiting")
    elif served is not None and not _disconnected(served):
        log.error("websocket stream failed", exc_info=served)
        await _close(websocket, CLOSE_ERROR, "internal error")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):  # the client may have gone meanwhile
            await websocket.close(code, reason)


async def _read(websocket: WebSocket, frames: asyncio.Queue[str | bytes]) -> None:
    """Queue client frames until the client closes (or floods us)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        data = message.get("bytes", b"") if data is None else data
        try:
            frames.put_nowait(data)
        except asyncio.QueueFull:
            raise _Flooded() from None


async def _serve(
    websocket: WebSocket,
    frames: asyncio.Queue[str | bytes],
    engine: Engine,
    generator: Generator,
    session_id: str,
    limit: int,
) -> None:
    while True:
        frame = await frames.get()
        try:
            if len(frame) > limit:
                raise InvalidInput(
                    f"frame of {len(frame)} bytes exceeds the limit of {limit}", code="payload_too_large"
                )
            await _handle(websocket, _json_object(frame), engine, generator, session_id)
        except (EngineError, ValidationError) as exc:
            await websocket.send_json(error_payload(exc, engine.metrics))
        except Exception as exc:
            if _disconnected(exc):
                raise
            await websocket.send_json(error_payload(exc, engine.metrics))  # logged there; the socket stays usable


def _json_object(frame: str | bytes) -> dict[str, Any]:
    # orjson: no recursion in Python (a frame nested thousands deep is an error, not a RecursionError that
    # unwinds the connection) and a depth limit of its own; what it accepts is strict JSON, as json.loads's is.
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"a frame must be a JSON object: {exc}") from None
    except RecursionError:
        raise InvalidInput("a frame must be a JSON object: it is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidInput('a frame must be a JSON object: {"text": ...} or {"generate": {...}}')
    return data


async def _handle(
    websocket: WebSocket, data: dict[str, Any], engine: Engine, generator: Generator, session_id: str
) -> None:
    if "generate" in data:
        fields = GenerateFrame.model_validate(data).generate
        plan = await generator.prepare(
            sampling_params(generator, fields),
            session_id=session_id,
            text=fields.text,
            tokens=fields.tokens,
            expected_position=fields.expected_position,
            owner=owner_tag_of(websocket),
        )
        render = NativeEvents()
        # aclosing: a send that fails (the client is gone) closes the generation at that unsent token.
        async with aclosing(generator.stream(plan)) as events:
            async for event in events:
                for payload in render.token(event) if isinstance(event, Token) else render.finished(event):
                    await websocket.send_json(payload)
        return
    body = SessionPredictRequest.model_validate(data)
    result = await engine.session_predict(
        session_id, text=body.text, tokens=body.tokens, top_k=body.top_k, expected_position=body.expected_position
    )
    await websocket.send_json(
        {"position": result.record.position, "next": [TokenProbability.of(t).model_dump() for t in result.next]}
    )


def _disconnected(exc: BaseException) -> bool:
    """Errors that only mean the client went away while we were sending (Starlette raises RuntimeError for a send
    after the close, the server an OSError or WebSocketDisconnect)."""
    return isinstance(exc, WebSocketDisconnect | OSError | RuntimeError)
