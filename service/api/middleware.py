"""The one middleware in front of every route, pure ASGI (not BaseHTTPMiddleware, so streams pass untouched).

Per HTTP request, in one layer rather than four stacked ones: the API-key check and rate limit (access.py's
AccessControl, on /v1 and /v2), the request-body limit, the request timeout, and one log line with the request
metrics. WebSocket handshakes get the key check. Anything else passes straight through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.access import AccessControl, guarded
from service.api.access_log import AccessLog
from service.api.errors import engine_error_response
from service.api.fast_predict import FastPredict
from service.errors import RequestTimeout
from service.metrics import Metrics

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's template (/v1/sessions/{id}/predict), never the raw path with its session id."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class _Deadline:
    """A request's timeout: its task is cancelled unless lifted in time (when the answer starts, or the request ends).

    What asyncio.timeout does, for the one use here, at a third of its cost per request (about 4 against 1.3 us,
    a few percent of the event loop's time per predict at 64 sessions): one timer, nothing else.
    """

    __slots__ = ("_cancelling", "_expired", "_handle", "_task", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False

    def arm(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task, self._cancelling = task, task.cancelling()
        self._handle = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def lift(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def timed_out(self) -> bool:
        """Called with the CancelledError in hand: True (and the cancellation undone) when it is this deadline's
        alone; False when the request was also cancelled from elsewhere, which must go on."""
        assert self._task is not None
        return self._expired and self._task.uncancel() <= self._cancelling


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access: AccessControl,
        metrics: Metrics,
        max_bytes: int,
        timeout_s: float,
        access_log: AccessLog,
    ) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics
        self.access_log = access_log
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.fast = FastPredict(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and guarded(scope["path"]):
            refusal = self.access.check(scope)
            if refusal is not None:
                await self.access.refuse_websocket(scope, send, refusal)
                return
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server error handler answers 500
        guard = guarded(scope["path"])
        deadline = _Deadline(self.timeout_s) if guard and self.timeout_s else None
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start" and not started:
                started = True
                status = int(message["status"])
                if deadline is not None:
                    deadline.lift()  # once an answer has started (a stream), the timeout is lifted
            await send(message)

        try:
            refusal = self.access.check(scope) if guard else None
            if refusal is not None:
                status = refusal.status_code
                await refusal(scope, receive, send)
            elif deadline is None:
                await self._route(scope, receive, send_status)
            else:
                await self._within(deadline, scope, receive, send_status, lambda: started)
        finally:
            self._log(scope, status, time.perf_counter() - start)

    async def _within(
        self, deadline: _Deadline, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]
    ) -> None:
        """504 `request_timeout` when no answer has started within timeout_s. The request is cancelled, which the
        engine treats as a client that went away: queued work is skipped and a running batch writes nothing for it,
        so a timed-out request changes nothing. Streams are bounded by max_generate_tokens instead."""
        deadline.arm()
        try:
            await self._route(scope, receive, send)
        except asyncio.CancelledError:
            if not deadline.timed_out() or started():
                raise  # a cancellation from elsewhere (a disconnect, the server stopping), or after the answer began
            self.metrics.rejections.labels("request_timeout").inc()
            await engine_error_response(RequestTimeout(self.timeout_s))(scope, receive, send)
        finally:
            deadline.lift()

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, or for a plain session predict its fast path (fast_predict.py), which hands anything else on."""
        session_id = self.fast.session_of(scope)
        if session_id is None:
            await self.app(scope, self._limited(scope, receive), send)
            return

        async def fallback(again: Receive) -> None:
            await self.app(scope, self._limited(scope, again), send)

        await self.fast(scope, receive, send, session_id, fallback)

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` that refuses bodies over max_bytes with 413, counting what arrives whatever Content-Length
        claims. It raises from `receive`, i.e. when the route reads its body, after routing: the log and metrics
        name the route template and the error handlers give the usual error shape."""
        limit = self.max_bytes
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
        received = 0

        def too_large() -> HTTPException:
            return HTTPException(413, f"request body exceeds the limit of {limit} bytes")

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise too_large()  # refused before a byte of it is read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large()
            return message

        return limited

    def _log(self, scope: Scope, status: int, elapsed: float) -> None:
        """The request metrics and its log line (access_log.py), labelled by route template, never by session id."""
        route = route_template(scope)
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        state: dict[str, Any] = scope.get("state") or {}
        # The version the request worked on (service/api/deps.py records it), if any.
        model = (state["model"], state["model_version"]) if "model" in state else None
        self.metrics.observe_request(route, method, status, elapsed, model)
        session_id = (scope.get("path_params") or {}).get("id") or state.get("session_id")
        if isinstance(session_id, str):
            session_id = session_id[:64]  # a path can carry anything; real ids are 22 characters
        self.access_log.request(method, route, status, elapsed, session_id)
