"""Gate inspection: POST /v1/sessions/{id}/inspect advances the session like predict and also returns, for every
character fed and every layer, the forget, input and output gates, the candidate, and the resulting C and h; POST
/v1/inspect does the same from a zero state without storing anything.

The answer holds layers x 6 x hidden_size floats per character, so it is serialised straight from the float32
arrays (orjson), not through per-float pydantic validation; InspectResponse documents its shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Response

from service.api.access import SessionId
from service.api.deps import InspectorDep
from service.api.errors import responses
from service.api.schemas import TokenProbability
from service.api.schemas_generate import InspectRequest, InspectResponse
from service.engine.inspection import Inspection

router = APIRouter(tags=["inspection"])

GATES = ("f", "i", "c_tilde", "o", "c", "h")


def _body(result: Inspection, chars: tuple[str, ...], session_id: str | None) -> dict[str, Any]:
    # Per layer, each gate as float32 (T, H): the precision the served model computes in; rows go out as arrays.
    gates = [{g: getattr(layer, g).astype(np.float32) for g in GATES} for layer in result.layers]
    means = [{g: getattr(layer, g).mean(axis=1) for g in GATES} for layer in result.layers]  # each (T,) float64
    steps = []
    for t, token in enumerate(result.ids.tolist()):
        layers = [
            {"layer": n, **{g: arrays[g][t] for g in GATES}, "mean": {g: float(m[g][t]) for g in GATES}}
            for n, (arrays, m) in enumerate(zip(gates, means, strict=True))
        ]
        steps.append({"char": chars[token], "id": token, "position": result.start_position + t + 1, "layers": layers})
    body: dict[str, Any] = {
        "position": result.position,
        "layers": len(result.layers),
        "hidden_size": int(result.layers[0].h.shape[1]),
        "steps": steps,
        "next": [TokenProbability.of(t).model_dump() for t in result.next],
        "deviation": result.deviation,
    }
    return {"session_id": session_id, **body} if session_id is not None else body


def _answer(result: Inspection, chars: tuple[str, ...], session_id: str | None) -> Response:
    content = orjson.dumps(_body(result, chars, session_id), option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, media_type="application/json")


@router.post(
    "/v1/sessions/{id}/inspect",
    response_model=InspectResponse,
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **responses(400, 404, 409, 413, 422)},
)
async def session_inspect(session_id: SessionId, body: InspectRequest, inspector: InspectorDep) -> Response:
    """Feed the text to the session, as predict does, and return every gate's activations for each character
    and layer (full vectors, and their means), computed from the weights in the ONNX file."""
    result = await inspector.inspect(session_id=session_id, text=body.text, tokens=body.tokens, top=body.top_k)
    return _answer(result, inspector.chars, session_id)


@router.post(
    "/v1/inspect",
    response_model=InspectResponse,
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **responses(400, 413, 422)},
)
async def inspect(body: InspectRequest, inspector: InspectorDep) -> Response:
    """Stateless gate inspection: the same, from a zero state; nothing is stored."""
    result = await inspector.inspect(text=body.text, tokens=body.tokens, top=body.top_k)
    return _answer(result, inspector.chars, None)
