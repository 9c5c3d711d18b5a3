"""What calls return (frozen dataclasses), and the parsers that build them from the server's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class NextToken:
    token: str
    id: int
    prob: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """The most likely next tokens (most likely first) after the input; `session_id` None when stateless."""

    next: list[NextToken]
    position: int
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    position: int
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation: `finish_reason` is e.g. "length" or "stop"; `position` is the session's after it."""

    text: str
    tokens: list[int]
    finish_reason: str
    position: int


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token as it streams; `position` is the session's position after it."""

    token: str
    id: int
    position: int


@dataclass(frozen=True, slots=True)
class _SessionCreated:
    session_id: str
    position: int
    expires_at: datetime | None
    next: list[NextToken] | None


def _time(value: object) -> datetime:
    """An API timestamp: ISO 8601 (what the server sends) or Unix seconds, as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"not a timestamp: {value!r}")


def _next_tokens(raw: object) -> list[NextToken]:
    if not isinstance(raw, list):
        raise ValueError(f"'next' must be a list, got {raw!r}")
    return [NextToken(token=str(t["token"]), id=int(t["id"]), prob=float(t["prob"])) for t in raw]


def _object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError("the response body is not a JSON object")
    return body


def _prediction(body: Mapping[str, Any]) -> Prediction:
    session_id = body.get("session_id")
    return Prediction(
        next=_next_tokens(body["next"]),
        position=int(body["position"]),
        session_id=None if session_id is None else str(session_id),
    )


def _session_info(body: Mapping[str, Any]) -> SessionInfo:
    ttl = body.get("ttl_seconds")
    return SessionInfo(
        session_id=str(body["session_id"]),
        position=int(body["position"]),
        created_at=_time(body["created_at"]),
        last_used_at=_time(body["last_used_at"]),
        expires_at=_time(body["expires_at"]),
        ttl_seconds=None if ttl is None else float(ttl),
    )


def _session_created(body: Mapping[str, Any]) -> _SessionCreated:
    nxt = body.get("next")
    expires = body.get("expires_at")
    return _SessionCreated(
        session_id=str(body["session_id"]),
        position=int(body["position"]),
        expires_at=None if expires is None else _time(expires),
        next=None if nxt is None else _next_tokens(nxt),
    )


def _generation(body: Mapping[str, Any], tokens: list[int] | None = None) -> Generation:
    ids = tokens if tokens is not None else [int(t) for t in body["tokens"]]
    return Generation(
        text=str(body["text"]), tokens=ids, finish_reason=str(body["finish_reason"]), position=int(body["position"])
    )
