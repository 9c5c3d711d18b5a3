"""The hot answers (predict) written straight to JSON with orjson, not through a pydantic model per row.

The routes keep their `response_model` for the OpenAPI document; returning a Response skips FastAPI's second
validation and serialization of what the engine already typed. Datetimes are written as pydantic writes them
(UTC with a `Z`), so the bytes on the wire keep their shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from service.engine.topk import TokenProb


class FastJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)


def token_probs(tokens: Sequence[TokenProb]) -> list[dict[str, Any]]:
    return [{"token": t.token, "id": t.id, "prob": t.prob} for t in tokens]
