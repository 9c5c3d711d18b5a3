"""GET /v1/model: what is being served and how, built here from the engine's typed facts and the settings."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import EngineDep, SettingsDep
from service.api.errors import responses
from service.api.schemas import BatchingInfo, LimitsInfo, ModelInfo, SessionsInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=responses())
async def model_info(engine: EngineDep, settings: SettingsDep) -> ModelInfo:
    """Name, version, fingerprint, vocabulary, shape, execution provider, batching and session settings."""
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
