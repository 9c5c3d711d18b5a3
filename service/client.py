"""The Python client, re-exported: it lives in its own distribution, `lstm-serve-client` (clients/python/, import
name `lstm_serve_client`, needing only httpx), so `from service.client import Client` keeps working here.

`make dev` installs it (editable); the serving install (`pip install .`) does not, and nothing the server imports
at serve time imports this module. The benchmark's load generator does (`service.bench.load`).
"""

from __future__ import annotations

try:
    from lstm_serve_client import (
        DEFAULT_TIMEOUT,
        AsyncClient,
        AsyncSession,
        AsyncTokenStream,
        Client,
        Generation,
        LstmServeError,
        NextToken,
        PendingSession,
        Prediction,
        ServerSentEvent,
        Session,
        SessionInfo,
        SSEDecoder,
        TokenEvent,
        TokenStream,
        error_from_body,
        error_from_response,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - the message when the client distribution is missing
    if exc.name != "lstm_serve_client":
        raise
    raise ModuleNotFoundError(
        "service.client re-exports the lstm-serve-client distribution, which is not installed: "
        "pip install ./clients/python (from the repository root), or make dev",
        name=exc.name,
    ) from exc

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncSession",
    "AsyncTokenStream",
    "Client",
    "Generation",
    "LstmServeError",
    "NextToken",
    "PendingSession",
    "Prediction",
    "SSEDecoder",
    "ServerSentEvent",
    "Session",
    "SessionInfo",
    "TokenEvent",
    "TokenStream",
    "error_from_body",
    "error_from_response",
]
