"""THE one place that turns errors into HTTP responses, all of the shape {"error": {"code", "message"}}.

Engine exceptions map to a status and a code here; request validation, unknown routes and wrong methods are
reshaped the same way; anything unexpected becomes a 500 with no traceback in the body (it is logged instead).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import ErrorResponse
from service.errors import (
    Draining,
    EngineError,
    InvalidInput,
    InvalidToken,
    ModelUnloaded,
    NotReady,
    PositionConflict,
    RequestTimeout,
    SessionExpired,
    SessionNotFound,
    StateMismatch,
    StateStoreUnavailable,
    TooManySessions,
    TooManyStreams,
    UnknownModel,
    VersionConflict,
)
from service.metrics import REJECTION_REASONS, Metrics
from service.security.keys import ANONYMOUS

log = logging.getLogger(__name__)

# Engine exception -> (status, code). InvalidInput carries its own code (invalid_request, text_too_long, ...).
STATUS: dict[type[EngineError], tuple[int, str]] = {
    SessionNotFound: (404, "session_not_found"),
    SessionExpired: (404, "session_expired"),
    InvalidToken: (422, "invalid_token"),
    InvalidInput: (422, "invalid_request"),
    PositionConflict: (409, "position_conflict"),
    VersionConflict: (409, "position_conflict"),
    TooManySessions: (429, "too_many_sessions"),
    TooManyStreams: (429, "too_many_streams"),
    RequestTimeout: (504, "request_timeout"),
    StateMismatch: (422, "state_mismatch"),
    NotReady: (503, "not_ready"),
    Draining: (503, "draining"),
    StateStoreUnavailable: (503, "state_store_unavailable"),
    UnknownModel: (404, "model_not_found"),
    ModelUnloaded: (410, "model_unloaded"),
}

DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read (e.g. not UTF-8).",
    401: "`unauthorized`: API keys are configured and the request has no valid `Authorization: Bearer <key>`.",
    404: "`session_not_found`: no such session; `session_expired`: it existed but expired (TTL) or was evicted; "
    "`model_not_found`: no such model or version (the message names what is served).",
    410: "`model_unloaded`: the session's model version was unloaded with force; its sessions ended.",
    409: "`position_conflict`: the session is not at `expected_position`; nothing changed.",
    413: "`payload_too_large`: the body exceeds the server's max_request_bytes.",
    422: "`invalid_request`: malformed or out-of-range fields; `invalid_token`: a character or id outside the "
    "vocabulary (named, with its position); `text_too_long`; `state_mismatch` / `invalid_state`: a restored "
    "state that does not belong to the loaded model or is corrupt.",
    429: "`too_many_sessions`: the store (or this API key's share of it) is full; `too_many_streams`: this key runs "
    "its maximum of concurrent generations; `rate_limited`: this key is over its request rate. Retry after "
    "the Retry-After header's seconds.",
    503: "`not_ready` (model loading), `draining` (shutting down) or `state_store_unavailable`.",
    504: "`request_timeout`: no answer within the server's request_timeout_s; the request changed nothing.",
}

# Error codes that are limits doing their job, counted in lstm_serve_rejections_total{reason}.
REJECTIONS = frozenset(REJECTION_REASONS)


def responses(*statuses: int, guarded: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: the error statuses it can return, all with the error shape; 503 always,
    and on the key-guarded /v1 routes 401, 429 (rate limit) and 504 (request timeout) too."""
    always = (401, 429, 503, 504) if guarded else (503,)
    return {s: {"model": ErrorResponse, "description": DESCRIPTIONS[s]} for s in sorted({*statuses, *always})}


class ErrorJSONResponse(JSONResponse):
    # ASCII-escaped: an error may quote client input, and a lone surrogate must not make encoding fail.
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> ErrorJSONResponse:
    return ErrorJSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def status_and_code(exc: EngineError) -> tuple[int, str]:
    status, code = next((v for t, v in STATUS.items() if isinstance(exc, t)), (500, "internal_error"))
    return status, exc.code if isinstance(exc, InvalidInput) else code


def engine_error_response(exc: EngineError) -> ErrorJSONResponse:
    status, code = status_and_code(exc)
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidToken):
        details = {"position": exc.position}
        if exc.char is not None:
            details["char"] = exc.char
        if exc.token_id is not None:
            details["token_id"] = exc.token_id
    elif isinstance(exc, PositionConflict):
        details = {"expected_position": exc.expected, "position": exc.actual}
    elif isinstance(exc, SessionExpired):
        details = {"reason": exc.reason}
    elif isinstance(exc, TooManySessions):
        retry = max(1, math.ceil(exc.retry_after))
        headers["Retry-After"] = str(retry)
        per_client = getattr(exc, "per_client", False)
        details = {"max_sessions": exc.max_sessions, "retry_after": retry, "per_key": exc.per_key and not per_client}
        if per_client:
            details["per_client"] = True
    elif isinstance(exc, TooManyStreams):
        headers["Retry-After"] = "1"
        details = {"max_streams": exc.limit}
    elif isinstance(exc, NotReady | Draining | StateStoreUnavailable):
        headers["Retry-After"] = "1"
    return error_response(status, code, exc.message, details or None, headers or None)


def for_anonymous_client(exc: EngineError) -> EngineError:
    """The same refusal worded for an anonymous client: without API keys the engine's per-owner limits (sessions,
    concurrent generations) count a client's tag (service/security/clients.py), not a key."""
    if isinstance(exc, TooManySessions) and exc.per_key:
        worded = TooManySessions(exc.max_sessions, exc.retry_after, per_key=True)
        worded.message = worded.message.replace("this API key holds", "this client holds")
        worded.args = (worded.message,)
        worded.per_client = True  # type: ignore[attr-defined]
        return worded
    if isinstance(exc, TooManyStreams):
        worded_streams = TooManyStreams(exc.limit)
        worded_streams.message = worded_streams.message.replace("this API key", "this client")
        worded_streams.args = (worded_streams.message,)
        return worded_streams
    return exc


def _anonymous(connection: Request) -> bool:
    return getattr(connection.state, "principal", None) == ANONYMOUS


def count_rejection(metrics: Metrics | None, code: str) -> None:
    if metrics is not None and code in REJECTIONS:
        metrics.rejections.labels(code).inc()


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def validation_error_response(errors: Sequence[Any]) -> ErrorJSONResponse:
    """422 invalid_request naming each field that failed validation (pydantic's `errors()`)."""
    # The client's input is not echoed back: it may be large, and it is theirs already.
    problems = [
        {"field": _where(e.get("loc", ())), "problem": str(e.get("msg", "invalid")).removeprefix("Value error, ")}
        for e in errors
    ]
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:10])
    return error_response(422, "invalid_request", message or "invalid request", {"errors": problems[:50]})


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())


HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error; it has been logged")


def error_payload(exc: Exception, metrics: Metrics | None = None) -> dict[str, Any]:
    """The body of an error met inside a stream (an SSE event, a WebSocket frame), where no status can be sent:
    the same shape and codes as the HTTP answers (and the same rejection counts, given the metrics)."""
    if isinstance(exc, EngineError):
        response = engine_error_response(exc)
    elif isinstance(exc, ValidationError | RequestValidationError):
        response = validation_error_response(exc.errors())
    else:
        log.error("unhandled error in a stream", exc_info=exc)
        response = error_response(500, "internal_error", "internal server error; it has been logged")
    payload: dict[str, Any] = json.loads(bytes(response.body))
    count_rejection(metrics, payload["error"]["code"])
    return payload


def install(app: FastAPI, metrics: Metrics) -> None:
    """The one exception-to-HTTP map: engine errors, validation errors, HTTP errors, and anything unexpected."""

    async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        count_rejection(metrics, status_and_code(exc)[1])
        if request.url.path.startswith("/v2/models/"):  # raised choosing the model (deps): the protocol's shape
            from service.api.v2_errors import v2_error_response

            return v2_error_response(exc)
        return engine_error_response(for_anonymous_client(exc) if _anonymous(request) else exc)

    async def _http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        count_rejection(metrics, code)
        headers = dict(exc.headers) if exc.headers else None
        if request.url.path.startswith("/v2/") and exc.status_code == 413:
            # A V2 body over the limit: the Open Inference Protocol's shape, {"error": "..."}, like V2's other errors.
            return ErrorJSONResponse({"error": message}, status_code=413, headers=headers)
        return error_response(exc.status_code, code, message, headers=headers)

    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
