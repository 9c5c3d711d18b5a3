"""The Open Inference Protocol's error shape, `{"error": "message"}`, beside the V2 routes and codec.

tritonclient and KServe clients read this shape; the v1 routes use the project's `{"error": {"code", "message"}}`
(service/api/errors.py), whose status mapping this one follows.
"""

from __future__ import annotations

import logging

from service.api.errors import ErrorJSONResponse, engine_error_response, status_and_code
from service.api.v2_codec import V2ProtocolError
from service.errors import EngineError

log = logging.getLogger(__name__)


def v2_error(status: int, message: str) -> ErrorJSONResponse:
    """The protocol's error shape, {"error": "message"}, which tritonclient and KServe clients read."""
    return ErrorJSONResponse({"error": message}, status_code=status)


def v2_error_response(exc: Exception) -> ErrorJSONResponse:
    """An error of a V2 route: 400 for anything wrong with the request (Triton's status for invalid arguments and
    unknown sequences), otherwise the status the engine error has on the v1 routes (404 unknown model, 429, 503)."""
    if isinstance(exc, V2ProtocolError):
        return v2_error(400, exc.message)
    if isinstance(exc, EngineError):
        status, _ = status_and_code(exc)
        response = v2_error(400 if status in (409, 422) else status, exc.message)
        if status in (429, 503):
            response.headers["Retry-After"] = engine_error_response(exc).headers.get("Retry-After", "1")
        return response
    log.error("unhandled error on a V2 route", exc_info=exc)
    return v2_error(500, "internal server error; it has been logged")
