"""The playground: GET / serves one page (HTML, CSS and plain JavaScript shipped in ./static, no build step) that
types, predicts, generates and shows the LSTM's gates through the public /v1 API, as any client would.

The page's own routes are open, like /docs: the page, its three static files, and a small JSON summary with the
live counters it shows. Everything the page does to sessions goes through the guarded /v1 routes, with the key the
user types (kept in the browser's sessionStorage, sent only as `Authorization: Bearer`).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from service.api.deps import EngineDep, SettingsDep

router = APIRouter(tags=["playground"], include_in_schema=False)

STATIC = resources.files("service.api.playground") / "static"
MEDIA_TYPES = {
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "colormap.js": "text/javascript; charset=utf-8",
}
# Nothing but this server: no CDN, font or analytics request can even be attempted; no inline script or style.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/", response_class=HTMLResponse)
async def page() -> Response:
    """The playground page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/playground/static/{name}")
async def static(name: str) -> Response:
    """The page's stylesheet and scripts (a fixed list: nothing else of the package is reachable here)."""
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        return Response(status_code=404)
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/playground/summary")
async def summary(engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    """Live counters for the page: sessions held, generations running and tokens run so far (the page turns two
    readings into tokens/s), and the limits the page sizes its requests to. The counters are those /metrics shows;
    with metrics on a port of their own (metrics_port) they are left out here too."""
    limits = {
        "max_inspect_length": settings.max_inspect_length,
        "max_generate_tokens": settings.max_generate_tokens,
        "max_text_length": settings.max_text_length,
    }
    if settings.metrics_port is not None:
        return {"time": time.time(), "counters": None, "limits": limits}
    registry = engine.metrics.registry

    def sample(name: str, **labels: str) -> float:
        return float(registry.get_sample_value(name, labels) or 0.0)

    counters = {
        "sessions": int(sample("lstm_serve_active_sessions")),
        "streams": int(sample("lstm_serve_streams_in_progress")),
        "prompt_tokens": int(sample("lstm_serve_tokens_total", kind="prompt")),
        "generated_tokens": int(sample("lstm_serve_tokens_total", kind="generated")),
    }
    return {"time": time.time(), "counters": counters, "limits": limits}
