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
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection
from starlette.types import Scope, Send

from service.api.errors import ErrorJSONResponse, error_response
from service.api.v2_errors import v2_error
from service.errors import SessionNotFound
from service.logging import EveryInterval
from service.metrics import Metrics
from service.security.clients import Network, client_address, client_tag, is_client_tag
from service.security.keys import ANONYMOUS, KeyRing, bearer_token
from service.security.ratelimit import RateLimiter, retry_after_header
from service.session_ids import session_owner

log = logging.getLogger(__name__)

CLIENT_TAGS_KEPT = 4096
CLOSE_POLICY = 1008  # WebSocket close code for a refused handshake when the server cannot send a 401


def guarded(path: str) -> bool:
    """The API's routes: everything under /v1 and /v2 (health, metrics and docs stay open)."""
    return path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2")


class AccessControl:
    """API-key authentication and per-key rate limiting; ServiceMiddleware calls `check` for every guarded
    request (HTTP and WebSocket) before it reaches a route."""

    def __init__(
        self, keys: KeyRing, limiter: RateLimiter, metrics: Metrics, trusted_proxies: Sequence[Network] = ()
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.trusted_proxies = tuple(trusted_proxies)  # parsed once, at start
        self._refusals_logged = EveryInterval(10.0)
        # Parsing the address and hashing it cost more than the rest of the check; a client keeps its address.
        self._client_tags: dict[tuple[str | None, tuple[str, ...]], str] = {}

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
        state = scope.setdefault("state", {})
        state["principal"] = principal
        if principal == ANONYMOUS:  # the tag an anonymous client's sessions are counted under
            state["client_tag"] = self._client_tag(scope)
        return None

    def _client_tag(self, scope: Scope) -> str:
        peer = scope["client"][0] if scope.get("client") else None
        forwarded: tuple[str, ...] = ()
        if self.trusted_proxies:  # X-Forwarded-For counts only behind a trusted proxy
            forwarded = tuple(v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for")
        key = (peer, forwarded)
        tag = self._client_tags.get(key)
        if tag is None:
            if len(self._client_tags) >= CLIENT_TAGS_KEPT:  # keyed by what clients send: bounded
                self._client_tags.clear()
            tag = self._client_tags[key] = client_tag(client_address(peer, forwarded, self.trusted_proxies))
        return tag

    @staticmethod
    def _error(scope: Scope, status: int, code: str, message: str, headers: dict[str, str]) -> ErrorJSONResponse:
        # /v2 speaks the Open Inference Protocol's error shape, which tritonclient reads; /v1 the service's.
        if scope["path"].startswith("/v2"):
            response = v2_error(status, message)
            response.headers.update(headers)
            return response
        return error_response(status, code, message, headers=headers)

    async def refuse_websocket(self, scope: Scope, send: Send, response: ErrorJSONResponse) -> None:
        """Answer a refused WebSocket handshake with the HTTP error a plain request gets, where the server can.
        Logged at INFO, at most one line per interval with the count held back (any client can cause these); the
        path only, never the query string (it may hold a key)."""
        held = self._refusals_logged.due()
        if held is not None:
            log.info(
                "websocket handshake refused",
                extra={"status": response.status_code, "path": scope.get("path"), "refused_since_last": held},
            )
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
    """The caller's principal, which namespaces what it may reach: an API key's, or "" without API keys (every
    anonymous caller shares one namespace: V2 sequence ids, anonymous sessions)."""
    principal = getattr(connection.state, "principal", ANONYMOUS)
    return "" if principal == ANONYMOUS else str(principal)


def anonymous(connection: HTTPConnection) -> bool:
    return getattr(connection.state, "principal", ANONYMOUS) == ANONYMOUS


def owner_tag_of(connection: HTTPConnection) -> str:
    """The owner tag a new session records (in front of its id) and is counted under: the key's principal, or
    without keys the client's tag (service/security/clients.py: its address, or its X-Forwarded-For hop behind a
    trusted proxy; "" for loopback). The tag counts an anonymous client's sessions and streams; it does not fence
    them: any anonymous caller still reaches any anonymous session by its id (clients behind NAT or a changing
    proxy keep their sessions)."""
    caller = caller_of(connection)
    if caller:
        return caller
    return str(getattr(connection.state, "client_tag", ""))  # put there by AccessControl.check


def check_owner(connection: HTTPConnection, session_id: str) -> None:
    """SessionNotFound unless the caller may reach the session: a key reaches its own sessions only (another key's
    does not exist for it); without keys any anonymous session (untagged, or a client's tag) is reachable."""
    owner = session_owner(session_id)  # a model version's tag (a repository) is not part of who owns it
    caller = caller_of(connection)
    if caller and owner != caller:
        raise SessionNotFound(session_id)
    if not caller and owner and not is_client_tag(owner):
        raise SessionNotFound(session_id)


async def get_caller(connection: HTTPConnection) -> str:
    """The owner tag new sessions and streams are recorded and counted under (`owner_tag_of`)."""
    return owner_tag_of(connection)


SessionPath = Annotated[str, Path(alias="id", max_length=256, description="The session id returned at creation.")]


async def owned_session_id(connection: HTTPConnection, session_id: SessionPath) -> str:
    check_owner(connection, session_id)
    return session_id


CallerDep = Annotated[str, Depends(get_caller)]
SessionId = Annotated[str, Depends(owned_session_id)]
