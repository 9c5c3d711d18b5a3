"""Pure ASGI middleware (not BaseHTTPMiddleware, so streaming responses pass through untouched): request log +
metrics, the request-body size limit, and the request timeout. The API-key check is access.py's AccessMiddleware."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.access import guarded
from service.api.errors import engine_error_response
from service.errors import RequestTimeout
from service.metrics import Metrics

log = logging.getLogger("service.access")

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's template (/v1/sessions/{id}/predict), never the raw path with its session id."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestLogMiddleware:
    """One JSON log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server error handler answers 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(elapsed)
            state: dict[str, Any] = scope.get("state") or {}
            session_id = (scope.get("path_params") or {}).get("id") or state.get("session_id")
            if isinstance(session_id, str):
                session_id = session_id[:64]  # a path can carry anything; real ids are 22 characters
            log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "session_id": session_id,
                },
            )


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, counting what arrives whatever Content-Length claims.

    It raises HTTPException(413) from `receive` when the route reads its body, i.e. after routing, so the
    request log and metrics name the route template and the error handlers give the usual error shape.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise self._too_large()  # refused before a byte of it is read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


class TimeoutMiddleware:
    """504 `request_timeout` for an HTTP request whose response has not started within `timeout_s`.

    The request is cancelled, which the engine treats as a client that went away: its queued work is skipped and
    a batch already running writes nothing for it, so a timed-out request changes nothing. Once a response has
    started (a stream), the timeout is lifted: streams are bounded by max_generate_tokens.
    """

    def __init__(self, app: ASGIApp, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.timeout_s or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.timeout_s)

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_started)
        except TimeoutError:
            if not deadline.expired() or started:
                raise  # a TimeoutError of the app's own, or one after the answer began: not ours to answer
            self.metrics.rejections.labels("request_timeout").inc()
            await engine_error_response(RequestTimeout(self.timeout_s))(scope, receive, send)
