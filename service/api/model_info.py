"""GET /v1/model: what is being served and how, built here from the engine's typed facts and the settings; with
`?model=` (and `&version=`) a repository's other models and versions, else the default model's latest version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import EngineDep, ModelsDep, SettingsDep
from service.api.errors import responses
from service.api.schemas import BatchingInfo, LimitsInfo, ModelInfo, SessionsInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=responses(404, 422))
async def model_info(
    engine: EngineDep,
    registry: ModelsDep,
    settings: SettingsDep,
    model: Annotated[
        str | None, Query(max_length=256, description="A model's name (GET /v1/models); default: the default model.")
    ] = None,
    version: Annotated[
        str | None, Query(max_length=32, description="The model's version; default: its latest loaded version.")
    ] = None,
) -> ModelInfo:
    """Name, version, fingerprint, vocabulary, shape, execution provider, batching and session settings."""
    if model is not None or version is not None:
        engine = registry.resolve(model, version).engine  # 404 model_not_found, naming what is served
    engine.check_serving()
    served, cfg = engine.model, engine.config
    meta = served.metadata
    stats = await engine.session_stats()
    return ModelInfo(
        name=meta.name,
        version=meta.version,
        fingerprint=meta.fingerprint,
        val_loss=meta.val_loss,
        vocabulary="".join(meta.tokenizer.chars),
        vocab_size=meta.config.vocab_size,
        embed_size=meta.config.embed_size,
        layers=meta.config.num_layers,
        hidden_size=meta.config.hidden_size,
        peephole=meta.config.peephole,
        precision=meta.quantization or "fp32",
        provider=served.provider,
        batching=BatchingInfo(max_batch_size=cfg.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms),
        sessions=SessionsInfo(
            backend=settings.state_backend,
            active=stats.active,
            max_sessions=settings.max_sessions,
            default_ttl_seconds=cfg.session_ttl_s,
            max_ttl_seconds=cfg.max_session_ttl_s,
            state_bytes=served.state_bytes,
            evicted={str(reason): n for reason, n in stats.evicted.items()},
        ),
        limits=LimitsInfo(max_text_length=cfg.max_text_length, max_request_bytes=settings.max_request_bytes),
    )
