"""Triton's model repository API, for a server started with a model repository (LSTM_SERVE_MODEL_REPOSITORY):

- `POST /v2/repository/index`: every version, loaded (READY), unloading (UNLOADING: still serving its sessions)
  or not (UNAVAILABLE, with the reason: a failed load names its error);
- `POST /v2/repository/models/{name}/load`: load the model's versions that are not loaded (new ones, failed ones
  again); polling, when on, no longer skips a model unloaded through the API;
- `POST /v2/repository/models/{name}/unload`: stop new sessions on every version of the model at once; its
  sessions keep working until they end (a drain), or with `{"parameters": {"force": true}}` end now (their
  requests are answered 410 model_unloaded).

When API keys are on, these need an admin key (LSTM_SERVE_ADMIN_API_KEYS); otherwise they are open, as Triton's.
Errors have the protocol's shape, `{"error": "..."}`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from service.api.deps import Keys, KeysDep, RegistryDep
from service.api.errors import ErrorJSONResponse
from service.api.schemas import ErrorResponse
from service.api.v2_errors import v2_error, v2_error_response
from service.errors import EngineError
from service.security.keys import bearer_token

router = APIRouter(prefix="/v2/repository", tags=["model repository"])

ModelName = Annotated[str, Path(max_length=256, description="A model's folder name in the repository.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'A malformed body, a model that could not be loaded, or no repository: `{"error": "..."}`.'},
    403: {"description": 'API keys are on and the key is not an admin key: `{"error": "..."}`.'},
    404: {"description": 'No such model: `{"error": "..."}`.'},
    422: {"model": ErrorResponse, "description": "The model name is too long."},
}


async def _parameters(request: Request) -> dict[str, Any]:
    """The optional JSON body's `parameters` (read here, so that a bad body gets the protocol's error shape)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise ValueError("parameters must be a JSON object")
    return {**params, **({"ready": body["ready"]} if "ready" in body else {})}


def _refused(request: Request, keys: Keys) -> ErrorJSONResponse | None:
    if not keys.api.enabled:
        return None
    admin = keys.admin
    if not admin.enabled or admin.authenticate(bearer_token(request.headers.get("authorization"))) is None:
        return v2_error(403, "the repository API needs an admin key (LSTM_SERVE_ADMIN_API_KEYS)")
    return None


@router.post("/index", response_model=None, responses=ERRORS)
async def index(request: Request, registry: RegistryDep, keys: KeysDep) -> list[dict[str, object]] | ErrorJSONResponse:
    """Every model version in the repository and its state: READY, UNLOADING (draining its sessions) or
    UNAVAILABLE (with the reason: a failed load's error, or unloaded)."""
    refused = _refused(request, keys)
    if refused is not None:
        return refused
    try:
        ready = (await _parameters(request)).get("ready", False) is True
    except ValueError as exc:
        return v2_error(400, str(exc))
    rows = await registry.index()
    if ready:
        rows = [r for r in rows if r["state"] == "READY"]
    return rows


@router.post("/models/{name}/load", response_model=None, responses=ERRORS)
async def load(
    name: ModelName, request: Request, registry: RegistryDep, keys: KeysDep
) -> dict[str, Any] | ErrorJSONResponse:
    """Load the model's versions that are not loaded; 400 naming the error if none could be."""
    refused = _refused(request, keys)
    if refused is not None:
        return refused
    try:
        versions = await registry.load(name)
    except EngineError as exc:
        return v2_error_response(exc)
    return {"name": name, "versions": versions}


@router.post("/models/{name}/unload", response_model=None, responses=ERRORS)
async def unload(
    name: ModelName, request: Request, registry: RegistryDep, keys: KeysDep
) -> dict[str, Any] | ErrorJSONResponse:
    """Unload every version of the model: new sessions stop at once; its sessions drain (or, with
    `parameters.force`, end now with 410 model_unloaded)."""
    refused = _refused(request, keys)
    if refused is not None:
        return refused
    try:
        force = (await _parameters(request)).get("force", False) is True
    except ValueError as exc:
        return v2_error(400, str(exc))
    try:
        versions = await registry.unload(name, force=force)
    except EngineError as exc:
        return v2_error_response(exc)
    return {"name": name, "versions": versions, "force": force}
