"""The requests both clients make and how their responses are read: `_Call` builders and parsers, shared, so the
sync and async classes only do the I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from .errors import LstmServeError, error_from_response
from .results import (
    Generation,
    Prediction,
    SessionInfo,
    _generation,
    _object,
    _prediction,
    _session_created,
    _session_info,
    _SessionCreated,
    _time,
)
from .sse import _GenerationProtocol

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
_MISSING_STATUSES = frozenset({404, 410})  # a session already gone: fine when deleting on context exit


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API request and how to read its successful response."""

    method: str
    path: str
    body: Mapping[str, Any] | None
    parse: Callable[[httpx.Response], T]
    tolerate: frozenset[int] = field(default_factory=frozenset)  # statuses that count as success (parse sees them)


def _finish(call: _Call[T], response: httpx.Response) -> T:
    """The result of a call whose response body has been read, or the LstmServeError it carries."""
    if not response.is_success and response.status_code not in call.tolerate:
        raise error_from_response(response)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError) as e:
        raise LstmServeError(
            response.status_code, "invalid_response", f"{call.method} {call.path}: unexpected response body: {e}"
        ) from e


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields given; None means "not sent", so the server's default applies."""
    return {k: v for k, v in fields.items() if v is not None}


def _model_call() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/model", None, _object)


def _predict_call(text: str | None, tokens: Sequence[int] | None, top_k: int) -> _Call[Prediction]:
    body = _body(text=text, tokens=None if tokens is None else list(tokens), top_k=top_k)
    return _Call("POST", "/v1/predict", body, lambda r: _prediction(_object(r)))


def _create_session_call(
    text: str | None,
    tokens: Sequence[int] | None,
    top_k: int | None,
    ttl_seconds: float | None,
    state: Mapping[str, Any] | None,
) -> _Call[_SessionCreated]:
    body = _body(
        text=text,
        tokens=None if tokens is None else list(tokens),
        top_k=top_k,
        ttl_seconds=ttl_seconds,
        state=None if state is None else dict(state),
    )
    return _Call("POST", "/v1/sessions", body, lambda r: _session_created(_object(r)))


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "lstm-serve-client"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


class _SessionCalls:
    """What both Session classes share: identity, the last known position, and every request they make.

    Parsers update `position` as responses arrive, so it is always the latest position the server reported.
    """

    def __init__(self, created: _SessionCreated) -> None:
        self.id = created.session_id
        self.position = created.position
        self.expires_at = created.expires_at
        self.next = created.next  # the prediction made at creation, when text or tokens primed the session

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, position={self.position})"

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{self.id}"

    def _seen(self, position: int) -> None:
        self.position = position

    def _read_prediction(self, response: httpx.Response) -> Prediction:
        body = _object(response)
        result = _prediction(body)
        self._seen(result.position)
        if "expires_at" in body:
            self.expires_at = _time(body["expires_at"])
        return result

    def _read_info(self, response: httpx.Response) -> SessionInfo:
        info = _session_info(_object(response))
        self._seen(info.position)
        self.expires_at = info.expires_at
        return info

    def _read_generation(self, response: httpx.Response) -> Generation:
        result = _generation(_object(response))
        self._seen(result.position)
        return result

    def _predict_call(
        self, text: str | None, tokens: Sequence[int] | None, top_k: int, expected_position: int | None
    ) -> _Call[Prediction]:
        body = _body(
            text=text, tokens=None if tokens is None else list(tokens), top_k=top_k, expected_position=expected_position
        )
        return _Call("POST", f"{self._path}/predict", body, self._read_prediction)

    def _generate_body(
        self,
        max_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str] | None,
        stream: bool,
    ) -> dict[str, Any]:
        return {
            **_body(
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                stop=None if stop is None else list(stop),
            ),
            "stream": stream,
        }

    def _generate_call(
        self,
        max_tokens: int | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str] | None,
    ) -> _Call[Generation]:
        body = self._generate_body(max_tokens, temperature, top_k, top_p, seed, stop, stream=False)
        return _Call("POST", f"{self._path}/generate", body, self._read_generation)

    def _stream_protocol(self, status: int) -> _GenerationProtocol:
        return _GenerationProtocol(status, lambda g: self._seen(g.position))

    def _info_call(self) -> _Call[SessionInfo]:
        return _Call("GET", self._path, None, self._read_info)

    def _reset_call(self) -> _Call[SessionInfo]:
        return _Call("POST", f"{self._path}/reset", None, self._read_info)

    def _fork_call(self, ttl_seconds: float | None) -> _Call[_SessionCreated]:
        return _Call(
            "POST", f"{self._path}/fork", _body(ttl_seconds=ttl_seconds), lambda r: _session_created(_object(r))
        )

    def _export_call(self) -> _Call[dict[str, Any]]:
        return _Call("GET", f"{self._path}/state", None, _object)

    def _delete_call(self, missing_ok: bool) -> _Call[None]:
        return _Call("DELETE", self._path, None, lambda r: None, _MISSING_STATUSES if missing_ok else frozenset())
