"""The error every failed call raises, and how it is read from a response."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx


class LstmServeError(Exception):
    """The server refused or failed a request: its HTTP status and the `{"error": {"code", "message"}}` body.

    `status` is the HTTP status of the response that carried the error (200 for an error event mid-stream).
    `retry_after` is the Retry-After header in seconds, when the server sent one (429, 503). Codes the client
    itself raises: `invalid_response` (a 2xx body it cannot read) and `incomplete_stream` (a stream that ended
    without its final event).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details: dict[str, Any] = dict(details or {})


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_body(status: int, body: object, retry_after: float | None = None) -> LstmServeError:
    """The error a response body describes; tolerant of bodies that are not the server's shape (a proxy's)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        details = error.get("details")
        return LstmServeError(
            status,
            str(error.get("code") or f"http_{status}"),
            str(error.get("message") or "no message"),
            retry_after,
            details if isinstance(details, dict) else None,
        )
    if isinstance(error, str):  # the V2 inference routes answer {"error": "..."}, as Triton does
        return LstmServeError(status, f"http_{status}", error, retry_after)
    text = json.dumps(body) if body is not None else "no body"
    return LstmServeError(status, f"http_{status}", text[:500], retry_after)


def error_from_response(response: httpx.Response) -> LstmServeError:
    """The LstmServeError for a non-2xx response whose body has been read."""
    try:
        body: object = response.json()
    except ValueError:  # not JSON (an HTML error page, an empty body)
        body = {"error": response.text[:500] or response.reason_phrase}
    return error_from_body(response.status_code, body, _retry_after(response.headers.get("Retry-After")))
