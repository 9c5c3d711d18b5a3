"""POST /v1/sessions/{id}/predict without FastAPI's per-request machinery, for the plain request that makes up the
load (a session fed a few characters at a time): routing, dependency solving and body validation cost the event
loop several times what the engine does for one character.

Only a request that FastAPI would take as it stands comes this way: POST, `Content-Type: application/json`, a
declared Content-Length within the body limit, a session id within its 256 characters, and a body that plainly
passes SessionPredictRequest (schemas.plain_session_predict). Anything else (every bad input, a chunked or
oversized body, another content type, a disconnect while the body is read) goes to FastAPI with what was read
replayed, so its validation errors, their shape and status, stay FastAPI's own. The route stays registered: the
OpenAPI document and every other request use it.

The route's work is done by the route's own functions (owned_session_id and get_engine, its dependencies;
sessions.predict_answer, its body); errors are answered by the app's exception handlers through Starlette's own
wrapper; the scope gets the route, endpoint and path parameters that routing puts there, so the middleware's log
line and metrics are the same. It stands aside when the app overrides dependencies (tests) or traces with
OpenTelemetry (FastAPI's spans come from its own handling).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from service.api import sessions
from service.api.access import owned_session_id
from service.api.deps import get_engine
from service.api.schemas import PlainPredict, plain_session_predict

try:  # Starlette's private helper that routes use to answer errors with the app's handlers: the dependencies are
    # not pinned, so a Starlette without it must not break the server; the fast path then stands aside.
    from starlette._exception_handler import wrap_app_handling_exceptions
except ImportError:  # pragma: no cover - depends on the installed Starlette
    wrap_app_handling_exceptions = None  # type: ignore[assignment]

PATH = re.compile(r"/v1/sessions/([^/]+)/predict")  # the route's `{id}`: Starlette's str convertor, [^/]+
MAX_ID = 256  # access.SessionPath's max_length
JSON = b"application/json"

Fallback = Callable[[Receive], Awaitable[None]]


def _route() -> APIRoute:
    route = next(r for r in sessions.router.routes if getattr(r, "endpoint", None) is sessions.session_predict)
    assert isinstance(route, APIRoute)
    return route


def replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that gives back what was already read, then reads on."""
    pending = deque(messages)

    async def again() -> Message:
        return pending.popleft() if pending else await receive()

    return again


def _body_headers(scope: Scope) -> tuple[bytes | None, int | None]:
    content_type = length = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
        elif key == b"content-length" and value.isdigit():
            length = int(value)
    return content_type, length


class FastPredict:
    """The fast path of one app's session predict route; ServiceMiddleware asks `session_of` per request."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.route = _route()
        self._app: Any = None  # the app it was checked against, and the answer
        self._usable = False
        self._handlers: tuple[dict[Any, Any], dict[int, Any]] = ({}, {})

    def session_of(self, scope: Scope) -> str | None:
        """The session id when this request may take the fast path, else None (FastAPI serves it)."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        match = PATH.fullmatch(scope["path"])
        if match is None or len(match[1]) > MAX_ID or not self._usable_for(scope.get("app")):
            return None
        content_type, length = _body_headers(scope)
        if content_type != JSON or length is None or length > self.max_bytes:
            return None
        return match[1]

    def _usable_for(self, app: Any) -> bool:
        if app is not self._app:
            self._app, self._usable = app, self._serves_route(app)
            if self._usable:
                self._handlers = _exception_handlers(app)
        return self._usable and not app.dependency_overrides

    def _serves_route(self, app: Any) -> bool:
        if wrap_app_handling_exceptions is None:
            return False
        if not isinstance(app, FastAPI) or getattr(app.state, "registry", None) is None:
            return False
        settings = getattr(app.state, "settings", None)
        if settings is None or getattr(settings, "opentelemetry", True):
            return False
        return any(getattr(r, "original_router", None) is sessions.router for r in app.router.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, session_id: str, fallback: Fallback) -> None:
        messages, body = await self._read(receive)
        plain = None if body is None else _parse(body)
        if plain is None:
            await fallback(replay(messages, receive))
            return
        scope["route"], scope["endpoint"] = self.route, sessions.session_predict
        scope["path_params"] = {"id": session_id}
        scope["starlette.exception_handlers"] = self._handlers
        request = Request(scope, receive, send)

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            checked = await owned_session_id(request, session_id)
            response = await sessions.predict_answer(await get_engine(request), checked, plain)
            await response(scope, receive, send)

        assert wrap_app_handling_exceptions is not None  # _serves_route checked it
        await wrap_app_handling_exceptions(answer, request)(scope, receive, send)

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages read and the whole body; None for the body when it is not all there within the limit."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return messages, None
            if not message.get("more_body", False):
                break
        if len(messages) == 1:
            return messages, messages[0].get("body", b"")
        return messages, b"".join(m.get("body", b"") for m in messages)


def _parse(body: bytes) -> PlainPredict | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # FastAPI reads it with json.loads and answers what is wrong
    return plain_session_predict(data)


def _exception_handlers(app: FastAPI) -> tuple[dict[Any, Any], dict[int, Any]]:
    """What ExceptionMiddleware puts in the scope: the app's handlers but the server error's, by class and status
    (Starlette hands Exception and 500 to ServerErrorMiddleware, outside the one middleware)."""
    by_class: dict[Any, Any] = {}
    by_status: dict[int, Any] = {}
    for key, handler in app.exception_handlers.items():
        if key in (500, Exception):
            continue
        if isinstance(key, int):
            by_status[key] = handler
        else:
            by_class[key] = handler
    return by_class, by_status
