"""Gate inspection: POST /v1/sessions/{id}/inspect advances the session like predict and also returns, for every
character fed and every layer, the forget, input and output gates, the candidate, and the resulting C and h; POST
/v1/inspect does the same from a zero state without storing anything.

The answer holds layers x 6 x hidden_size floats per character, so it is serialised straight from the float32
arrays (orjson), not through per-float pydantic validation; InspectResponse documents its shape. The compact options
(`units`, `gates`, `precision`) cut it down to what a viewer draws: they select and round the same values here, in
the API layer, after the whole inspection has run, so they change nothing but the answer's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Response

from model.reference import GateTrace
from service.api.access import SessionId
from service.api.deps import EngineDep, InspectorDep, ModelsDep
from service.api.errors import error_response, responses
from service.api.schemas import TokenProbability
from service.api.schemas_generate import InspectRequest, InspectResponse
from service.engine.engine import Engine
from service.engine.inspection import Inspection

router = APIRouter(tags=["inspection"])

GATES = ("f", "i", "c_tilde", "o", "c", "h")


@dataclass(frozen=True, slots=True)
class Compact:
    """What of the inspection to send: which units of each layer (None: all), which vectors, how many decimals."""

    units: int | list[int] | None = None
    gates: tuple[str, ...] = GATES
    precision: int | None = None

    @classmethod
    def of(cls, body: InspectRequest) -> Compact:
        gates = GATES if body.gates is None else tuple(g for g in GATES if g in body.gates)
        return cls(units=body.units, gates=gates, precision=body.precision)

    def check(self, hidden_size: int) -> str | None:
        """What is wrong with the request for this model, if anything (checked before the session advances)."""
        if isinstance(self.units, list) and max(self.units) >= hidden_size:
            return f"units: the model has {hidden_size} units per layer (0 to {hidden_size - 1}), got {max(self.units)}"
        return None

    def select(self, layer: GateTrace) -> np.ndarray | None:
        """The units sent for this layer, or None for all of them."""
        if self.units is None:
            return None
        if isinstance(self.units, list):
            return np.asarray(self.units, dtype=np.int64)
        # The units whose memory moves most: the largest standard deviation of tanh(C) (the part of C that reaches
        # h; C itself can grow far past where tanh saturates) over the characters, then the largest mean |C|.
        return np.lexsort((-np.abs(layer.c).mean(axis=0), -np.tanh(layer.c).std(axis=0)))[: self.units]

    def values(self, array: np.ndarray, units: np.ndarray | None) -> np.ndarray:
        """(T, H) -> the values sent: the chosen units, as float32 or rounded to `precision` decimals."""
        chosen = np.ascontiguousarray(array if units is None else array[:, units], dtype=np.float32)  # orjson: C order
        if self.precision is None:
            return chosen
        # float64 after rounding: orjson then writes 0.123, not float32's nearest neighbour of it
        return np.round(chosen.astype(np.float64), self.precision)

    def mean(self, value: float) -> float:
        return float(value) if self.precision is None else round(float(value), self.precision)


def _body(result: Inspection, chars: tuple[str, ...], session_id: str | None, compact: Compact) -> dict[str, Any]:
    # Per layer, each gate as (T, units): float32, the precision the served model computes in, unless rounded.
    chosen = [compact.select(layer) for layer in result.layers]
    gates = [
        {g: compact.values(getattr(layer, g), units) for g in compact.gates}
        for layer, units in zip(result.layers, chosen, strict=True)
    ]
    means = [{g: getattr(layer, g).mean(axis=1) for g in GATES} for layer in result.layers]  # each (T,) float64
    steps = []
    for t, token in enumerate(result.ids.tolist()):
        layers = [
            {"layer": n, **{g: arrays[g][t] for g in compact.gates}, "mean": {g: compact.mean(m[g][t]) for g in GATES}}
            for n, (arrays, m) in enumerate(zip(gates, means, strict=True))
        ]
        steps.append({"char": chars[token], "id": token, "position": result.start_position + t + 1, "layers": layers})
    body: dict[str, Any] = {
        "position": result.position,
        "layers": len(result.layers),
        "hidden_size": int(result.layers[0].h.shape[1]),
        **({} if compact.units is None else {"units": [u.tolist() for u in chosen if u is not None]}),
        "steps": steps,
        "next": [TokenProbability.of(t).model_dump() for t in result.next],
        "deviation": result.deviation,
    }
    return {"session_id": session_id, **body} if session_id is not None else body


def _answer(result: Inspection, chars: tuple[str, ...], session_id: str | None, compact: Compact) -> Response:
    content = orjson.dumps(_body(result, chars, session_id, compact), option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, media_type="application/json")


def _compact(body: InspectRequest, engine: Engine) -> Compact | Response:
    compact = Compact.of(body)
    problem = compact.check(engine.model.metadata.config.hidden_size)
    return compact if problem is None else error_response(422, "invalid_request", problem)


@router.post(
    "/v1/sessions/{id}/inspect",
    response_model=InspectResponse,
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **responses(400, 404, 409, 413, 422)},
)
async def session_inspect(
    session_id: SessionId, body: InspectRequest, inspector: InspectorDep, engine: EngineDep
) -> Response:
    """Feed the text to the session, as predict does, and return every gate's activations for each character
    and layer (full vectors, and their means), computed from the weights in the ONNX file. `units`, `gates` and
    `precision` make the answer smaller."""
    compact = _compact(body, engine)
    if isinstance(compact, Response):
        return compact
    result = await inspector.inspect(session_id=session_id, text=body.text, tokens=body.tokens, top=body.top_k)
    return _answer(result, inspector.chars, session_id, compact)


@router.post(
    "/v1/inspect",
    response_model=InspectResponse,
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **responses(400, 404, 413, 422)},
)
async def inspect(body: InspectRequest, registry: ModelsDep) -> Response:
    """Stateless gate inspection: the same, from a zero state; nothing is stored. `model` and `version` choose the
    model (default: the default model's latest version)."""
    unit = registry.resolve(body.model, body.version)
    inspector, engine = unit.inspector, unit.engine
    compact = _compact(body, engine)
    if isinstance(compact, Response):
        return compact
    result = await inspector.inspect(text=body.text, tokens=body.tokens, top=body.top_k)
    return _answer(result, inspector.chars, None, compact)
