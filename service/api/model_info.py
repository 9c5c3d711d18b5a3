"""GET /v1/model: what is being served and how."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import EngineDep
from service.api.errors import responses
from service.api.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=responses())
async def model_info(engine: EngineDep) -> ModelInfo:
    """Name, version, fingerprint, vocabulary, shape, execution provider, batching and session settings."""
    return ModelInfo.model_validate(await engine.model_info())
