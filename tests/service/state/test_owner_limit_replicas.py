"""The per-key session limit through the engine, for two replicas sharing one Redis (and one memory-backed
server): 200 concurrent creates for one key with MAX_SESSIONS_PER_KEY=50 give exactly 50 sessions. The count and
the creation are one Lua script, so no two creations can both see 49 (in process, a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest

from service.app import Serving
from service.errors import TooManySessions
from service.state.store import SessionRecord
from tests.redis_server import RedisServer
from tests.service.conftest import SettingsFactory


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_200_concurrent_creates_for_one_key_give_exactly_the_limit(
    make_settings: SettingsFactory, request: pytest.FixtureRequest, backend: str
) -> None:
    extra: dict[str, object] = {"api_keys": "key-x", "max_sessions_per_key": 50, "max_sessions": 1000}
    replicas = 1
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        extra |= {"state_backend": "redis", "redis_url": server.url}
        replicas = 2
    servings = [Serving(make_settings(**extra)) for _ in range(replicas)]
    for serving in servings:
        await serving.start()
    try:
        engines = [s.engine for s in servings]
        in_flight = [asyncio.Semaphore(8) for _ in range(replicas)]  # many at once, within Redis timeouts

        async def create(i: int) -> tuple[SessionRecord, object]:
            async with in_flight[i % replicas]:
                return await engines[i % replicas].create_session(owner="kx")

        results = await asyncio.gather(*(create(i) for i in range(200)), return_exceptions=True)
        made = [r[0] for r in results if isinstance(r, tuple) and isinstance(r[0], SessionRecord)]
        refused = [r for r in results if isinstance(r, TooManySessions)]
        assert (len(made), len(refused)) == (50, 150), [r for r in results if not isinstance(r, tuple)][:3]
        assert all(r.per_key and r.max_sessions == 50 for r in refused)
        forks = await asyncio.gather(
            *(engines[i % replicas].fork_session(made[i].session_id) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(f, TooManySessions) and f.per_key for f in forks)
        assert await servings[0].store.count_owned("kx") == 50
    finally:
        for serving in servings:
            await serving.stop()
