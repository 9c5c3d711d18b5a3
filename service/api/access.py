"""Who is calling, and what they may reach: API keys, per-key rate limits, session ownership.

`AccessControl`, run by the one middleware (service/api/middleware.py), guards every /v1 and /v2 route (HTTP
and WebSocket): no or a wrong `Authorization: Bearer` key is answered 401 before routing, a key over its rate 429
`rate_limited` with Retry-After. The caller's principal goes into the connection's state, where routes read it
with `CallerDep`. Sessions carry their owner's principal in their id (service/session_ids.py), so `SessionId`
answers another key's session 404 `session_not_found`, exactly like an id that never existed. /healthz,
/readyz, /metrics and /docs stay open.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection
from starlette.types import Scope, Send

from service.api.errors import ErrorJSONResponse, error_response
from service.api.v2_errors import v2_error
from service.errors import SessionNotFound
from service.metrics import Metrics
from service.security.keys import ANONYMOUS, KeyRing, bearer_token
from service.security.ratelimit import RateLimiter, retry_after_header
from service.session_ids import session_owner

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # WebSocket close code for a refused handshake when the server cannot send a 401


def guarded(path: str) -> bool:
    """The API's routes: everything under /v1 and /v2 (health, metrics and docs stay open)."""
    return path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2")


class AccessControl:
    """API-key authentication and per-key rate limiting; ServiceMiddleware calls `check` for every guarded
    request (HTTP and WebSocket) before it reaches a route."""

    def __init__(self, keys: KeyRing, limiter: RateLimiter, metrics: Metrics) -> None:
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics

    def check(self, scope: Scope) -> ErrorJSONResponse | None:
        """None, with the caller's principal put into the scope's state, or the refusal to send."""
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        principal = self.keys.authenticate(bearer_token(authorization))
        if principal is None:
            self.metrics.rejections.labels("unauthorized").inc()
            # The presented key is never logged, only that one was refused.
            return self._error(
                scope,
                401,
                "unauthorized",
                "a valid API key is required: send `Authorization: Bearer <key>`",
                {"WWW-Authenticate": 'Bearer realm="lstm-serve"'},
            )
        if principal != ANONYMOUS:
            wait = self.limiter.acquire(principal)
            if wait > 0:
                self.metrics.rejections.labels("rate_limited").inc()
                retry = retry_after_header(wait)
                return self._error(
                    scope,
                    429,
                    "rate_limited",
                    f"this API key is over its rate of {self.limiter.rate:g} requests per second; retry in {retry} s",
                    {"Retry-After": retry},
                )
        scope.setdefault("state", {})["principal"] = principal
        return None

    @staticmethod
    def _error(scope: Scope, status: int, code: str, message: str, headers: dict[str, str]) -> ErrorJSONResponse:
        # /v2 speaks the Open Inference Protocol's error shape, which tritonclient reads; /v1 the service's.
        if scope["path"].startswith("/v2"):
            response = v2_error(status, message)
            response.headers.update(headers)
            return response
        return error_response(status, code, message, headers=headers)

    @staticmethod
    async def refuse_websocket(scope: Scope, send: Send, response: ErrorJSONResponse) -> None:
        """Answer a refused WebSocket handshake with the HTTP error a plain request gets, where the server can."""
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": response.status_code,
                    "headers": response.raw_headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": bytes(response.body)})
        else:
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": "a valid API key is required"})


# ---- what routes read ------------------------------------------------------------------------------------------
def caller_of(connection: HTTPConnection) -> str:
    """The caller's principal as sessions record it: "" without API keys."""
    principal = getattr(connection.state, "principal", ANONYMOUS)
    return "" if principal == ANONYMOUS else str(principal)


def check_owner(connection: HTTPConnection, session_id: str) -> None:
    """SessionNotFound unless the caller owns the session: another key's session does not exist for it."""
    if session_owner(session_id) != caller_of(connection):  # a model version's tag is not who owns it
        raise SessionNotFound(session_id)


async def get_caller(connection: HTTPConnection) -> str:
    return caller_of(connection)


SessionPath = Annotated[str, Path(alias="id", max_length=256, description="The session id returned at creation.")]


async def owned_session_id(connection: HTTPConnection, session_id: SessionPath) -> str:
    check_owner(connection, session_id)
    return session_id


CallerDep = Annotated[str, Depends(get_caller)]
SessionId = Annotated[str, Depends(owned_session_id)]
