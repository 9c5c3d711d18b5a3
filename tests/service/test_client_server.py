"""service.client against the real app in process (httpx.ASGITransport): every session call, generation with the
SSE token iterator, and errors raised with the server's codes. tests/e2e repeats the flow over TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.client import AsyncClient, Generation, LstmServeError, TokenEvent
from tests.service.conftest import AppClient


@pytest.fixture
async def lstm(client: AppClient) -> AsyncIterator[AsyncClient]:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    async with AsyncClient("http://testserver", transport=transport) as c:
        yield c


async def test_async_client_session_flow(lstm: AsyncClient, client: AppClient) -> None:
    async with lstm.create_session(text="ROMEO:\n") as session:
        assert session.position == 7 and session.next is not None
        assert (await session.predict("But")).position == 10
        result = await session.generate(max_tokens=10, temperature=0.7, seed=3, stop=["\n\n"])
        assert isinstance(result, Generation) and session.position == result.position == 10 + len(result.tokens)
        stream = session.stream(max_tokens=6, temperature=0.7, seed=4)
        events = [event async for event in stream]
        assert all(isinstance(e, TokenEvent) for e in events) and len(events) == 6
        assert stream.result is not None and stream.result.text == "".join(e.token for e in events)
        assert session.position == result.position + 6 == events[-1].position
        async with session.fork() as fork:
            assert fork.position == session.position
            state = await fork.export_state()
            async with lstm.create_session(state=state) as restored:
                same = await restored.generate(max_tokens=5, temperature=0)
                assert (await fork.generate(max_tokens=5, temperature=0)).tokens == same.tokens
        sid = session.id
    with pytest.raises(LstmServeError) as info:
        await lstm.session(sid).info()
    assert (info.value.status, info.value.code) == (404, "session_not_found")


async def test_async_client_errors_carry_the_code(lstm: AsyncClient) -> None:
    session = await lstm.create_session()
    with pytest.raises(LstmServeError) as too_many:
        await session.generate(max_tokens=10**5)
    assert (too_many.value.status, too_many.value.code) == (422, "too_many_tokens")
    with pytest.raises(LstmServeError) as gone:
        async for _ in lstm.session("nope").stream(max_tokens=3):
            pass
    assert gone.value.code == "session_not_found"
    await session.delete()


async def test_stream_error_midway_raises_after_the_tokens(
    lstm: AsyncClient, client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.errors import Draining

    session = await lstm.create_session(text="To be")
    store = client.serving.store
    real = store.save_many  # fault injection at the store: a generation's steps run inside the batcher
    writes = 0

    async def save_many(*args: Any) -> Any:
        nonlocal writes
        writes += 1  # one write per generated token (no prompt: the first token comes from the stored state)
        if writes == 3:
            raise Draining()
        return await real(*args)

    monkeypatch.setattr(store, "save_many", save_many)
    got: list[TokenEvent] = []
    with pytest.raises(LstmServeError) as info:
        async for event in session.stream(max_tokens=10):
            got.append(event)
    assert len(got) == 2 and info.value.code == "draining"


async def test_the_client_sends_its_api_key_and_sees_only_its_sessions(app_factory: Any) -> None:
    async with app_factory(api_keys="key-one-0123456789,key-two-0123456789") as client:
        transport = client._transport
        assert isinstance(transport, httpx.ASGITransport)
        one = AsyncClient("http://testserver", api_key="key-one-0123456789", transport=transport)
        two = AsyncClient("http://testserver", api_key="key-two-0123456789", transport=transport)
        nobody = AsyncClient("http://testserver", transport=transport)
        async with one, two, nobody, one.create_session(text="ROMEO:\n") as mine:
            assert (await mine.predict("a")).position == 8
            with pytest.raises(LstmServeError) as theirs:
                await two.session(mine.id).info()
            assert (theirs.value.status, theirs.value.code) == (404, "session_not_found")
            with pytest.raises(LstmServeError) as anonymous:
                await nobody.predict("a")
            assert (anonymous.value.status, anonymous.value.code) == (401, "unauthorized")
