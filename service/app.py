"""The ASGI application: routers, error handlers, middleware, and the lifespan that runs the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api import errors, health, model_info, predict, sessions
from service.api.middleware import BodyLimitMiddleware, RequestLogMiddleware
from service.config import Settings
from service.engine.engine import Engine
from service.metrics import Metrics

DESCRIPTION = """A character-level LSTM language model served with ONNX Runtime.

The server keeps each session's hidden state h and cell state C between requests: feed text piece by piece and
get next-character predictions without re-sending what came before. Concurrent sessions share batched ONNX Runtime
calls. Every error has the shape `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The app; its lifespan loads and warms the model, and drains the engine on shutdown."""
    engine = engine if engine is not None else Engine(settings, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.drain()

    app = FastAPI(title="lstm-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings
    for module in (predict, sessions, model_info, health):
        app.include_router(module.router)
    errors.install(app)
    # Added last = outermost: the request log sees every answer, the 413s of the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestLogMiddleware, metrics=engine.metrics)
    return app
