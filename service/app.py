"""The ASGI application: routers, error handlers, middleware, and the lifespan that runs the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from service import __version__
from service.api import errors, generate, health, inspect, model_info, openai, predict, sessions, stream, v2
from service.api.access import AccessMiddleware, TimeoutMiddleware
from service.api.middleware import BodyLimitMiddleware, RequestLogMiddleware
from service.config import Settings
from service.engine.engine import Engine
from service.engine.generation import Generator
from service.engine.inspection import Inspector
from service.engine.sequences import Sequences
from service.metrics import Metrics, MetricsServer
from service.security.keys import KeyRing
from service.security.ratelimit import RateLimiter

DESCRIPTION = """A character-level LSTM language model served with ONNX Runtime.

The server keeps each session's hidden state h and cell state C between requests: feed text piece by piece and
get next-character predictions without re-sending what came before. Concurrent sessions share batched ONNX Runtime
calls. Every error has the shape `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The app; its lifespan loads and warms the model, and drains the engine on shutdown."""
    engine = engine if engine is not None else Engine(settings, Metrics())
    keys = KeyRing.from_settings(settings.api_key_list, settings.api_key_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = MetricsServer(engine.metrics, settings.host, settings.metrics_port)
        await engine.start()
        try:
            yield
        finally:
            await engine.drain()
            if metrics_server is not None:
                metrics_server.close()

    otel = settings.opentelemetry
    app = FastAPI(
        title="lstm-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.generator = Generator(engine)
    app.state.inspector = Inspector(engine)
    app.state.sequences = Sequences(engine)
    # With keys, the guarded routers declare the Bearer scheme, so /docs shows it and offers "Authorize". The
    # check itself is AccessMiddleware's (it also covers the WebSocket); the declaration answers nothing.
    guard = (
        [Depends(HTTPBearer(auto_error=False, description="An API key (LSTM_SERVE_API_KEYS)."))] if keys.enabled else []
    )
    for module in (predict, sessions, generate, stream, inspect, openai, v2, model_info):
        app.include_router(module.router, dependencies=guard)
    app.include_router(health.router)
    errors.install(app)
    # Added last = outermost: the request log sees every answer, the 401s, 413s and 504s included; keys are
    # checked before the timeout starts and before a byte of the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s, metrics=engine.metrics)
    app.add_middleware(
        AccessMiddleware,
        keys=keys,
        limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        metrics=engine.metrics,
    )
    app.add_middleware(RequestLogMiddleware, metrics=engine.metrics)
    return app
