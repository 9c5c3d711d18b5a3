"""The hot answers (predict) written straight to JSON with orjson, not through a pydantic model per row.

The routes keep their `response_model` for the OpenAPI document; returning a Response skips FastAPI's second
validation and serialization of what the engine already typed; the engine's dataclasses (TokenProb) are written
by orjson as they are, each a JSON object of its fields. Datetimes are written as pydantic writes them
(UTC with a `Z`), so the bytes on the wire keep their shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class FastJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)
