"""Generation through the engine: exact tokens, the same whichever path and whatever shares the batches, sessions
that keep exactly what was sent, ordering with other requests, and many streams advancing in shared batches."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.app import Serving
from service.engine.config import EngineConfig
from service.engine.engine import Engine
from service.engine.generation import Finished, GenerationParams, Generator, Token
from service.engine.ort import OnnxRuntime
from service.engine.streams import STREAM_WINDOW
from service.errors import EngineError, InvalidInput, SessionNotFound
from service.metrics import Metrics
from service.state.memory import MemoryStateStore
from service.state.store import SessionRecord
from tests.service.conftest import SettingsFactory

PROMPT = "ROMEO:\nBut soft"


@pytest.fixture
def generator(engine: Engine) -> Generator:
    return Generator(engine)


def greedy_reference(runtime: OnnxRuntime, prompt: np.ndarray, n: int) -> list[int]:
    """n greedy tokens after the prompt, one ONNX Runtime call per token: the definition generation must meet."""
    zeros = np.zeros((runtime.layers, 1, runtime.hidden), dtype=np.float32)
    logits, h, c = runtime.run(prompt[None], zeros, zeros)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(logits[0, -1]))
        out.append(token)
        logits, h, c = runtime.run(np.array([[token]]), h, c)
    return out


async def stateless(generator: Generator, params: GenerationParams, text: str = PROMPT) -> Finished:
    return await generator.run(await generator.prepare(params, text=text))


async def test_greedy_is_the_argmax_of_every_step(engine: Engine, generator: Generator) -> None:
    result = await stateless(generator, generator.params(max_tokens=40, temperature=0))
    prompt = engine.model.metadata.tokenizer.encode(PROMPT)
    assert list(result.tokens) == greedy_reference(OnnxRuntime(engine.model.path, "cpu"), prompt, 40)
    assert result.text == engine.model.metadata.tokenizer.decode(result.tokens)
    assert (result.finish_reason, result.position, result.prompt_tokens) == ("length", len(PROMPT) + 40, len(PROMPT))


async def test_the_same_tokens_by_every_path(engine: Engine, generator: Generator) -> None:
    params = generator.params(max_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=42)
    expected = await stateless(generator, params)
    # A session primed earlier continues from its stored state: the first token comes from the output layer.
    primed, _ = await engine.create_session(text=PROMPT)
    continued = await generator.run(await generator.prepare(params, session_id=primed.session_id))
    # A fresh session given the prompt with the generation.
    fresh, _ = await engine.create_session()
    prompted = await generator.run(await generator.prepare(params, session_id=fresh.session_id, text=PROMPT))
    assert continued.tokens == prompted.tokens == expected.tokens
    assert continued.position == prompted.position == len(PROMPT) + 30
    # Another seed gives another text; the same seed again the same one.
    assert (
        await stateless(generator, generator.params(max_tokens=30, temperature=0.9, seed=43))
    ).tokens != expected.tokens
    assert (await stateless(generator, params)).tokens == expected.tokens


async def test_seeded_output_does_not_depend_on_what_shares_the_batches(generator: Generator) -> None:
    params = generator.params(max_tokens=25, temperature=1.0, seed=7)
    alone = await stateless(generator, params)
    others = [generator.params(max_tokens=n, temperature=1.3, seed=n) for n in range(5, 40, 3)]
    crowd = await asyncio.gather(stateless(generator, params), *(stateless(generator, p, "To be") for p in others))
    assert crowd[0].tokens == alone.tokens


async def test_the_session_remembers_what_it_wrote(engine: Engine, generator: Generator) -> None:
    record, _ = await engine.create_session(text=PROMPT)
    result = await generator.run(
        await generator.prepare(generator.params(max_tokens=12, seed=1), session_id=record.session_id)
    )
    assert (await engine.get_session(record.session_id)).position == len(PROMPT) + 12
    after = await engine.session_predict(record.session_id, text="x", top_k=76)
    whole = await engine.predict(text=PROMPT + result.text + "x", top_k=76)
    assert [t.id for t in after.next] == [t.id for t in whole.next]
    assert np.allclose([t.prob for t in after.next], [t.prob for t in whole.next], atol=1e-5)


async def test_stop_strings_end_the_generation(engine: Engine, generator: Generator) -> None:
    free = await stateless(generator, generator.params(max_tokens=40, temperature=0))
    stop = free.text[5:7]  # a stop string that greedy decoding is known to produce
    first = free.text.index(stop) + len(stop)
    stopped = await stateless(generator, generator.params(max_tokens=40, temperature=0, stop=[stop, "never"]))
    assert (stopped.finish_reason, stopped.text, stopped.stop) == ("stop", free.text[:first], stop)
    assert stopped.position == len(PROMPT) + first


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 1001),
        ("temperature", -0.5),
        ("top_k", 77),
        ("top_p", 0.0),
        ("seed", -1),
        ("seed", 2**64),
        ("stop", [""]),
    ],
)
def test_parameters_are_checked(generator: Generator, field: str, value: object) -> None:
    with pytest.raises(InvalidInput, match=field if field != "stop" else "stop"):
        generator.params(**{field: value})  # type: ignore[arg-type]


async def test_defaults_respect_the_limit(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings(max_generate_tokens=20))
    eng = serving.engine
    await serving.start()
    try:
        params = Generator(eng).params()
        assert params.max_tokens == 20 and params.temperature == 1.0 and 0 <= params.seed < 2**64
        assert Generator(eng).params().seed != params.seed  # drawn per request when not given
    finally:
        await serving.stop()


async def test_unknown_session_is_refused_before_streaming(generator: Generator) -> None:
    with pytest.raises(SessionNotFound):
        await generator.prepare(generator.params(), session_id="nope")


async def test_a_generation_holds_the_session_until_it_ends(engine: Engine, generator: Generator) -> None:
    record, _ = await engine.create_session(text=PROMPT)
    plan = await generator.prepare(generator.params(max_tokens=5, temperature=0), session_id=record.session_id)
    async with aclosing(generator.stream(plan)) as events:
        first = await anext(events)
        assert isinstance(first, Token)
        predict = asyncio.create_task(engine.session_predict(record.session_id, text="a"))
        await asyncio.sleep(0.05)
        assert not predict.done()  # waits for the generation's lock
        rest = [event async for event in events]
    assert isinstance(rest[-1], Finished)
    assert (await predict).record.position == len(PROMPT) + 5 + 1  # applied after the whole generation


async def test_closing_at_an_unconfirmed_token_rolls_it_back(engine: Engine, generator: Generator) -> None:
    record, _ = await engine.create_session(text=PROMPT)
    plan = await generator.prepare(generator.params(max_tokens=50, temperature=0), session_id=record.session_id)
    received: list[Token] = []
    async with aclosing(generator.stream(plan)) as events:
        async for event in events:
            assert isinstance(event, Token)
            received.append(event)
            if len(received) == 3:
                break  # the third token is in hand but its send never completed: closed at its yield
    assert received[-1].position == len(PROMPT) + 3
    assert (await engine.get_session(record.session_id)).position == len(PROMPT) + 2
    sent = "".join(t.token for t in received[:2])
    after = await engine.session_predict(record.session_id, text="e", top_k=3)
    whole = await engine.predict(text=PROMPT + sent + "e", top_k=3)
    assert [t.id for t in after.next] == [t.id for t in whole.next]
    assert engine.metrics.streams_in_progress._value.get() == 0


async def test_a_stream_runs_at_most_a_window_ahead_and_keeps_only_what_was_sent(
    engine: Engine, generator: Generator
) -> None:
    """The engine runs a stream's steps without waiting for its consumer, but at most STREAM_WINDOW tokens
    ahead; a consumer that stops puts the session back at the last group it confirmed (by asking for the next)."""
    record, _ = await engine.create_session(text=PROMPT)
    sid = record.session_id
    params = generator.params(max_tokens=500, temperature=0.8, seed=5)
    plan = await generator.prepare(params, session_id=sid)
    async with aclosing(generator.stream_groups(plan)) as groups:
        first = await anext(groups)
        await asyncio.sleep(0.3)  # the consumer lags: the engine fills the window, then parks the row
        ahead = (await engine.get_session(sid)).position - len(PROMPT)
        assert len(first) < ahead <= len(first) + STREAM_WINDOW
        second = await anext(groups)  # confirms the first group, and the engine goes on
        assert 0 < len(second) <= STREAM_WINDOW + 1
    # The second group was handed out but never confirmed: the session keeps exactly the first.
    assert (await engine.get_session(sid)).position == len(PROMPT) + len(first)
    sent = "".join(t.token for t in first if isinstance(t, Token))
    after = await engine.session_predict(sid, text="e", top_k=3)
    whole = await engine.predict(text=PROMPT + sent + "e", top_k=3)
    assert [t.id for t in after.next] == [t.id for t in whole.next]
    # And the tokens are those of the same generation consumed without lag.
    fresh, _ = await engine.create_session(text=PROMPT)
    alone = await generator.run(await generator.prepare(params, session_id=fresh.session_id))
    assert [t.id for t in [*first, *second] if isinstance(t, Token)] == list(alone.tokens[: len(first) + len(second)])


async def test_a_stream_stopped_while_its_write_is_in_flight_keeps_what_was_sent(tiny_model_path: Path) -> None:
    """A remote store's write takes a while: a consumer that stops meanwhile still leaves its session at exactly
    the tokens it confirmed, the landed write included in the rollback's compare-and-set."""

    class RemoteLikeStore(MemoryStateStore):
        async def save_many(self, *args: Any) -> list[SessionRecord | EngineError]:
            await asyncio.sleep(0.002)  # the round trip to a store on another machine
            return await super().save_many(*args)

    runtime = OnnxRuntime(tiny_model_path, "cpu")
    engine = Engine(EngineConfig(max_batch_size=8), Metrics())
    await engine.start(runtime, RemoteLikeStore(runtime.layers, runtime.hidden, 16))
    try:
        generator = Generator(engine)
        for seed in range(6):
            record, _ = await engine.create_session(text=PROMPT)
            plan = await generator.prepare(generator.params(max_tokens=200, seed=seed), session_id=record.session_id)
            async with aclosing(generator.stream_groups(plan)) as groups:
                first = await anext(groups)
                await anext(groups)  # confirms the first group; this one is never confirmed
                await asyncio.sleep(0.001 * seed)  # stop at different points of the next write
            assert (await engine.get_session(record.session_id)).position == len(PROMPT) + len(first)
    finally:
        await engine.drain()


async def test_a_step_cancelled_while_its_batch_runs_writes_nothing(serving: Serving) -> None:
    engine = serving.engine
    record, _ = await engine.create_session(text=PROMPT)
    runtime = serving.runtime
    started, release = threading.Event(), threading.Event()
    real_run = runtime.run

    def slow_run(*args: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        started.set()
        release.wait(5)
        return real_run(*args)

    runtime.run = slow_run  # type: ignore[method-assign,assignment]
    try:
        step = asyncio.create_task(engine.step(np.array([3]), session_id=record.session_id, kind="generated"))
        await asyncio.to_thread(started.wait, 5)
        step.cancel()  # the client went away while ONNX Runtime ran its batch
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await step
        await engine.step(np.array([1]))  # the batch has finished
    finally:
        runtime.run = real_run  # type: ignore[method-assign]
    assert (await engine.get_session(record.session_id)).position == len(PROMPT)


async def test_many_streams_advance_together_in_shared_batches(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings(max_batch_size=64, max_batch_delay_ms=0))
    eng = serving.engine
    await serving.start()
    try:
        generator = Generator(eng)
        params = [generator.params(max_tokens=30, temperature=0.8, seed=s) for s in range(64)]
        batches, runs = eng.stats().batches, eng.stats().model_runs

        async def one(p: GenerationParams) -> Finished:
            return await stateless(generator, p)

        results = await asyncio.gather(*(one(p) for p in params))
        tokens = sum(len(r.tokens) for r in results)
        assert tokens == 64 * 30
        # One step per stream per batch: about max_tokens + 1 batches in all, not one per token.
        assert eng.stats().batches - batches < tokens / 8
        assert eng.stats().model_runs - runs < tokens / 8
        metrics = eng.metrics
        assert sample(metrics, "lstm_serve_tokens_total", kind="generated") == tokens
        assert sample(metrics, "lstm_serve_time_to_first_token_seconds_count") == 64
        assert sample(metrics, "lstm_serve_inter_token_latency_seconds_count") == 64 * 29
        assert metrics.streams_in_progress._value.get() == 0
        # Each stream's tokens are what it would have generated alone.
        assert (await one(params[17])).tokens == results[17].tokens
    finally:
        await serving.stop()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(name)


async def test_many_seeded_streams_in_steady_batches_draw_their_own_tokens(generator: Generator) -> None:
    """A dozen streams of one length run as the same rows batch after batch; the engine then draws with the last
    batch's parameters one step on instead of rebuilding them. Each stream must still draw exactly the tokens it
    draws alone (in batches of one, sampled row by row)."""
    params = [generator.params(max_tokens=30, temperature=0.9, top_k=30, top_p=0.95, seed=100 + n) for n in range(12)]
    crowd = await asyncio.gather(*(stateless(generator, p) for p in params))
    for p, together in zip(params, crowd, strict=True):
        assert together.tokens == (await stateless(generator, p)).tokens


@pytest.mark.parametrize("group", [8, 1])
async def test_a_lone_streams_tokens_reach_the_event_loop_a_group_at_a_time(
    make_settings: SettingsFactory, group: int
) -> None:
    """One stream's steps are batches of one; the engine thread holds their tokens back until a group's worth is
    ready (EngineCore._holds), so the event loop is woken once for several. The first token and the last go at once;
    a stream handed out token by token (groups of 1) is never held. The tokens are the same either way."""
    serving = Serving(make_settings(stream_group_tokens=group, max_batch_delay_ms=0))
    await serving.start()
    try:
        engine = serving.engine
        generator = Generator(engine)
        before = engine.stats().handoffs
        result = await stateless(generator, generator.params(max_tokens=40, temperature=0))
        handoffs = engine.stats().handoffs - before
        prompt = engine.model.metadata.tokenizer.encode(PROMPT)
        assert list(result.tokens) == greedy_reference(OnnxRuntime(engine.model.path, "cpu"), prompt, 40)
        if group == 1:
            assert handoffs >= 40  # one wake-up per token (and one for the prompt's step)
        else:
            assert handoffs <= 40 // 2  # about 40 / 8 + the first and the last; held at most 5 ms each
    finally:
        await serving.stop()
