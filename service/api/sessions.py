"""Sessions: the server keeps each session's LSTM state (h, C) between requests, so clients feed text piece by
piece. Create, predict, inspect, delete, reset, fork, export and restore."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.access import CallerDep, SessionId
from service.api.deps import EngineDep, ModelsDep, UnitDep
from service.api.errors import responses
from service.api.fast_json import FastJSON
from service.api.schemas import (
    CreateSessionRequest,
    ForkRequest,
    ForkResponse,
    PlainPredict,
    SessionCreated,
    SessionInfo,
    SessionPredictRequest,
    SessionPredictResponse,
    SessionState,
    utc,
)
from service.engine.engine import Engine

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


def _log_session(request: Request, session_id: str) -> None:
    # The request log line names the session even when its id is not in the path (creation, fork).
    request.state.session_id = session_id


@router.post(
    "",
    status_code=201,
    response_model=SessionCreated,
    response_model_exclude_none=True,
    responses=responses(400, 404, 413, 422, 429),
)
async def create_session(
    registry: ModelsDep, request: Request, caller: CallerDep, body: CreateSessionRequest | None = None
) -> SessionCreated:
    """Create a session at position 0 (or from an exported `state`); if `text` or `tokens` are given, feed them
    and return the next-token distribution too. The body may be omitted. With a model repository, `model` and
    `version` choose what it runs on (default: the default model's latest version); it stays there for life."""
    body = body if body is not None else CreateSessionRequest()
    unit = registry.resolve(body.model, body.version)
    record, nxt = await unit.engine.create_session(
        text=body.text,
        tokens=body.tokens,
        top_k=body.top_k,
        ttl_s=body.ttl_seconds,
        state=None if body.state is None else body.state.portable(),
        owner=unit.owner(caller),
    )
    _log_session(request, record.session_id)
    return SessionCreated.of(record, nxt, (unit.name, unit.version))


@router.post("/{id}/predict", response_model=SessionPredictResponse, responses=responses(400, 404, 409, 413, 422))
async def session_predict(session_id: SessionId, body: SessionPredictRequest, engine: EngineDep) -> Response:
    """Feed the next piece of text to the session and return the most likely next tokens. The session's state
    advances only if the request succeeds; with `expected_position` it applies only at that position (409 if not)."""
    return await predict_answer(engine, session_id, body)


async def predict_answer(engine: Engine, session_id: str, body: SessionPredictRequest | PlainPredict) -> FastJSON:
    """The route's work once its inputs are in hand; the fast path (fast_predict.py) answers with it too."""
    result = await engine.session_predict(
        session_id, text=body.text, tokens=body.tokens, top_k=body.top_k, expected_position=body.expected_position
    )
    r = result.record
    return FastJSON(
        {
            "session_id": r.session_id,
            "position": r.position,
            "expires_at": utc(r.expires_at),
            "next": result.next,
        }
    )


@router.get("/{id}", response_model=SessionInfo, responses=responses(404, 422))
async def get_session(session_id: SessionId, unit: UnitDep) -> SessionInfo:
    """Position, creation time, last use and expiry of a session, and the model version it is pinned to."""
    return SessionInfo.of(await unit.engine.get_session(session_id), (unit.name, unit.version))


@router.delete("/{id}", status_code=204, response_class=Response, responses=responses(404, 422))
async def delete_session(session_id: SessionId, engine: EngineDep) -> Response:
    """Delete a session and free its state."""
    await engine.delete_session(session_id)
    return Response(status_code=204)


@router.post("/{id}/reset", response_model=SessionInfo, responses=responses(404, 422))
async def reset_session(session_id: SessionId, unit: UnitDep) -> SessionInfo:
    """Set the session's state back to zeros and its position to 0 (the id and TTL stay)."""
    return SessionInfo.of(await unit.engine.reset_session(session_id), (unit.name, unit.version))


@router.post("/{id}/fork", status_code=201, response_model=ForkResponse, responses=responses(400, 404, 413, 422, 429))
async def fork_session(
    session_id: SessionId, unit: UnitDep, registry: ModelsDep, request: Request, body: ForkRequest | None = None
) -> ForkResponse:
    """A new session with a copy of this one's state and position: cheap branching. The source is unchanged. The
    fork runs on the source's model version (refused once that version is unloading)."""
    if not unit.accepting and unit.tagged:
        registry.resolve(unit.name, unit.version)  # raises: no new sessions on an unloading version
    record = await unit.engine.fork_session(session_id, None if body is None else body.ttl_seconds)
    _log_session(request, record.session_id)
    return ForkResponse(**SessionInfo.of(record, (unit.name, unit.version)).model_dump(), forked_from=session_id)


@router.get("/{id}/state", response_model=SessionState, responses=responses(404, 422))
async def export_state(session_id: SessionId, engine: EngineDep) -> SessionState:
    """Export the session's state (h and C as base64 little-endian float32) with the model fingerprint; restore
    it with POST /v1/sessions {"state": ...} on any server running the same model."""
    return SessionState.of(await engine.export_state(session_id))
