"""POST /v1/predict: the next-token distribution after a text, from a zero state; nothing is stored."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import ModelsDep
from service.api.errors import responses
from service.api.fast_json import FastJSON
from service.api.schemas import PredictRequest, PredictResponse

router = APIRouter(tags=["prediction"])


@router.post("/v1/predict", response_model=PredictResponse, responses=responses(400, 404, 413, 422))
async def predict(body: PredictRequest, registry: ModelsDep) -> Response:
    """Stateless prediction: feed the whole text (or token ids) and return the most likely next tokens (on the
    `model` and `version` named, by default the default model's latest version)."""
    result = await registry.resolve(body.model, body.version).engine.predict(
        text=body.text, tokens=body.tokens, top_k=body.top_k
    )
    return FastJSON({"next": result.next, "position": result.position})
