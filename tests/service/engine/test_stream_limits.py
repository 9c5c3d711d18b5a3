"""Concurrent generations per API key: a key at its limit is refused before streaming, other keys are not, and a
closed stream gives its slot back."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from service.app import Serving
from service.engine.generation import Generator
from service.errors import TooManyStreams
from tests.service.conftest import SettingsFactory


async def test_streams_per_key(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings(max_streams_per_key=2))
    engine = serving.engine
    await serving.start()
    try:
        generator = Generator(engine)
        params = generator.params(max_tokens=50, seed=1)
        running = [generator.stream(await generator.prepare(params, text="a", owner="kalice")) for _ in range(2)]
        for stream in running:
            await anext(stream)  # both are generating now
        with pytest.raises(TooManyStreams):
            await generator.prepare(params, text="b", owner="kalice")
        await generator.prepare(params, text="b", owner="kbob")  # another key has its own allowance
        await generator.prepare(params, text="b", owner="")  # and without keys there is no per-key limit
        await running[0].aclose()
        async with aclosing(generator.stream(await generator.prepare(params, text="b", owner="kalice"))) as again:
            assert (await anext(again)).position == 2
        await running[1].aclose()
    finally:
        await serving.stop()
