"""The composition root: settings in, a running service out.

`Serving` builds every part from Settings -- the ONNX Runtime session, the state store (memory or Redis), the
snapshotter, the engine -- starts them in order and stops them in reverse; `create_app` wraps it in the ASGI app
(routers, the error map, the one middleware) whose lifespan runs it. Nothing else builds these parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from service import __version__
from service.api import (
    errors,
    generate,
    health,
    inspect,
    model_info,
    openai,
    predict,
    repository,
    sessions,
    v2,
    websocket,
)
from service.api.access import AccessControl
from service.api.access_log import AccessLog
from service.api.middleware import ServiceMiddleware
from service.api.playground import routes as playground
from service.config import Settings
from service.engine.engine import Engine
from service.engine.ort import OnnxRuntime, verify_sha256
from service.metrics import Metrics, MetricsServer
from service.registry import ModelRegistry
from service.security.clients import parse_networks
from service.security.keys import KeyRing
from service.security.ratelimit import RateLimiter
from service.state.memory import MemoryStateStore
from service.state.snapshot import Snapshotter
from service.state.store import StateStore

log = logging.getLogger(__name__)

DESCRIPTION = """A character-level LSTM language model served with ONNX Runtime.

The server keeps each session's hidden state h and cell state C between requests: feed text piece by piece and
get next-character predictions without re-sending what came before. Concurrent sessions share batched ONNX Runtime
calls. Every error has the shape `{"error": {"code": "...", "message": "..."}}`.
"""


def load_runtime(settings: Settings) -> OnnxRuntime:
    """The model file checked (SHA-256 when configured) and loaded into ONNX Runtime; blocking."""
    if settings.model_sha256 is not None:
        verify_sha256(settings.model_path, settings.model_sha256)
    return OnnxRuntime(
        settings.model_path,
        settings.provider,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        graph_optimization=settings.graph_optimization,
        allow_spinning=settings.allow_spinning,
        next_token=settings.next_token_graph,
    )


def make_store(settings: Settings, runtime: OnnxRuntime) -> StateStore:
    """The configured state store, shaped for the loaded model's state."""
    if settings.state_backend == "redis":
        from service.state.redis import RedisStateStore  # the redis client is imported only when used

        return RedisStateStore.from_url(
            settings.redis_url,
            runtime.layers,
            runtime.hidden,
            settings.max_sessions,
            model_fingerprint=runtime.metadata.fingerprint,
            key_prefix=settings.redis_key_prefix,
            evict_idle_after_s=settings.evict_idle_after_s,
            remember_gone_s=86_400.0 if settings.remember_expired else 0.0,
        )
    return MemoryStateStore(
        runtime.layers,
        runtime.hidden,
        settings.max_sessions,
        evict_idle_after_s=settings.evict_idle_after_s,
        remember_gone=settings.remember_expired,
    )


class Serving:
    """Runtime, store, snapshotter and engine, built from Settings; `start` brings them up, `stop` drains them.

    `engine` exists from construction (routes and the signal handler hold it); it takes work once started.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.engine = Engine(settings.engine_config(), metrics if metrics is not None else Metrics())
        self._store: StateStore | None = None
        self._snapshots: Snapshotter | None = None
        self._runtime: OnnxRuntime | None = None
        self.clean = True  # False when the stop could not keep everything (the final snapshot failed)

    @property
    def runtime(self) -> OnnxRuntime:
        """The loaded ONNX Runtime session (for the benchmark and for fault injection in tests)."""
        if self._runtime is None:
            raise RuntimeError("not started")
        return self._runtime

    @property
    def store(self) -> StateStore:
        """The state store the engine was given."""
        if self._store is None:
            raise RuntimeError("not started")
        return self._store

    async def start(self) -> None:
        s = self.settings
        runtime = self._runtime = await asyncio.to_thread(load_runtime, s)  # off the event loop: it takes a while
        store = self._store = make_store(s, runtime)
        if s.snapshot_path is not None and isinstance(store, MemoryStateStore):
            self._snapshots = Snapshotter(store, s.snapshot_path, s.snapshot_interval_s, runtime.metadata.fingerprint)
            await self._snapshots.restore()
            if s.durable:  # the journal since the last snapshot on top of it, then compacted into a new one
                await store.open_journal(s.snapshot_path, runtime.metadata.fingerprint)
                await self._snapshots.write()
        elif s.snapshot_path is not None:
            log.warning("snapshot_path is ignored: only the memory backend snapshots (Redis keeps the sessions)")
        await self.engine.start(runtime, store)
        if self._snapshots is not None:
            self._snapshots.start()

    async def stop(self) -> bool:
        """Drain the engine (every queued step runs), write the final snapshot after the last batch, close the
        store. False when the final snapshot failed: the sessions changed since the last good one are lost."""
        await self.engine.drain()
        if self._snapshots is not None:
            self.clean = await self._snapshots.stop()
        if self._store is not None:
            await self._store.close()
        log.info("drained", extra={"clean": self.clean})  # after the final snapshot: nothing left to keep
        return self.clean

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        await self.start()
        try:
            yield self.engine
        finally:
            await self.stop()


def create_app(settings: Settings) -> FastAPI:
    """The app; its lifespan loads and warms the model (every version of a model repository), and drains the
    engines on shutdown."""
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics, Serving)
    serving = registry.primary.serving  # the default model's (first-loaded version's) unit
    engine = serving.engine
    api_keys = settings.api_key_list
    keys = KeyRing.from_settings(api_keys, settings.api_key_file)
    access_log = AccessLog()
    admin_keys = KeyRing([])
    if keys.enabled and settings.admin_api_key_list:  # admin keys matter only when keys are on; they are keys too
        admin_keys = KeyRing.from_settings(settings.admin_api_key_list, None)
        keys = KeyRing.from_settings([*api_keys, *settings.admin_api_key_list], settings.api_key_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = MetricsServer(metrics, settings.host, settings.metrics_port)
        await registry.start()
        applier = asyncio.get_running_loop().create_task(metrics.keep_applied(), name="lstm-serve-metrics")
        try:
            yield
        finally:
            try:
                await registry.stop()
            finally:
                applier.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await applier  # it applies what waits as it ends
                if metrics_server is not None:
                    metrics_server.close()
                access_log.flush()  # the request lines that wait (service/api/access_log.py)

    otel = settings.opentelemetry
    app = FastAPI(
        title="lstm-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.serving = serving
    app.state.engine = engine
    app.state.settings = settings
    app.state.registry = registry
    app.state.keys = keys
    app.state.admin_keys = admin_keys
    app.state.generator = registry.primary.generator
    app.state.inspector = registry.primary.inspector
    app.state.sequences = registry.primary.sequences
    # With keys, the guarded routers declare the Bearer scheme, so /docs shows it and offers "Authorize". The
    # check itself is ServiceMiddleware's (it also covers the WebSocket); the declaration answers nothing.
    guard = (
        [Depends(HTTPBearer(auto_error=False, description="An API key (LSTM_SERVE_API_KEYS)."))] if keys.enabled else []
    )
    for module in (predict, sessions, generate, websocket, inspect, openai, v2, repository, model_info):
        app.include_router(module.router, dependencies=guard)
    app.include_router(health.router)
    app.include_router(playground.router)  # GET / and its static files: open, like /docs
    errors.install(app, metrics)
    app.add_middleware(
        ServiceMiddleware,
        access=AccessControl(
            keys,
            RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
            metrics,
            parse_networks(settings.trusted_proxies),
        ),
        metrics=metrics,
        max_bytes=settings.max_request_bytes,
        timeout_s=settings.request_timeout_s,
        access_log=access_log,
    )
    return app
