"""Fixtures for the service tests: settings on the tiny model, a started engine, an in-process HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import Serving, create_app
from service.config import Settings
from service.engine.engine import Engine
from service.state.store import SessionRecord

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tiny_model_path: Path) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_path": tiny_model_path,
            "provider": "cpu",
            "max_batch_delay_ms": 2.0,
            "max_sessions": 1000,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def serving(make_settings: SettingsFactory) -> AsyncIterator[Serving]:
    """The composition root's parts (runtime, store, engine) on the tiny model, started."""
    built = Serving(make_settings())
    await built.start()
    yield built
    await built.stop()


@pytest.fixture
async def engine(serving: Serving) -> Engine:
    return serving.engine


async def read_state(engine: Engine, session_id: str) -> tuple[SessionRecord, np.ndarray, np.ndarray]:
    """A session's record, h and c, read through the engine's public lease."""
    async with engine.session(session_id) as lease:
        return await lease.read()


class AppClient(httpx.AsyncClient):
    """An httpx client bound to an app whose lifespan has run; `.engine` is the app's engine."""

    engine: Engine
    serving: Serving


AppFactory = Callable[..., AbstractAsyncContextManager[AppClient]]


@pytest.fixture
def app_factory(make_settings: SettingsFactory) -> AppFactory:
    """`async with app_factory(**settings) as client:` runs an app (lifespan included) and a client against it."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[AppClient]:
        app = create_app(make_settings(**overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AppClient(transport=transport, base_url="http://testserver") as client:
                client.engine = app.state.engine
                client.serving = app.state.serving
                yield client

    return run


@pytest.fixture
async def client(app_factory: AppFactory) -> AsyncIterator[AppClient]:
    async with app_factory() as c:
        yield c
