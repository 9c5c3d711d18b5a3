"""The Engine facade: lifecycle, validation before anything changes, per-session FIFO order, fork, export and
import, and the defining property (pieces fed to a session == the whole text, stateless)."""

from __future__ import annotations

import asyncio
import string
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import Serving
from service.engine.engine import Engine
from service.engine.state_io import PortableState
from service.errors import (
    Draining,
    InvalidInput,
    InvalidToken,
    NotReady,
    PositionConflict,
    SessionNotFound,
    StateMismatch,
    StateStoreUnavailable,
)
from tests.factories import TEST_VOCAB
from tests.redis_server import free_port
from tests.service.conftest import SettingsFactory, read_state

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"


def probs(nxt: list) -> dict[int, float]:  # type: ignore[type-arg]
    return {t.id: t.prob for t in nxt}


def assert_same(a: list, b: list) -> None:  # type: ignore[type-arg]
    pa, pb = probs(a), probs(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert abs(pa[k] - pb[k]) <= 1e-5


async def test_not_ready_before_start_and_draining_after(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings())
    eng = serving.engine
    assert not eng.ready
    with pytest.raises(NotReady):
        await eng.predict(text="a")
    await serving.start()
    assert eng.ready and eng.stats().model_runs >= 4  # warmed up: three shapes plus one batch
    await serving.stop()
    assert not eng.ready
    with pytest.raises(Draining):
        await eng.predict(text="a")


async def test_pieces_equal_whole_text(engine: Engine) -> None:
    whole = await engine.predict(text=TEXT, top_k=76)
    record, _ = await engine.create_session()
    for piece in (TEXT[:5], TEXT[5:6], TEXT[6:40], TEXT[40:]):
        result = await engine.session_predict(record.session_id, text=piece, top_k=76)
    assert result.record.position == whole.position == len(TEXT)
    assert_same(result.next, whole.next)


async def test_text_and_tokens_are_the_same_input(engine: Engine) -> None:
    tok = engine.model.metadata.tokenizer
    by_text = await engine.predict(text="ROMEO:", top_k=5)
    by_ids = await engine.predict(tokens=[int(i) for i in tok.encode("ROMEO:")], top_k=5)
    assert by_text == by_ids


async def test_invalid_input_changes_nothing(engine: Engine) -> None:
    record, _ = await engine.create_session(text="Hello")
    _, h_before, _ = await read_state(engine, record.session_id)
    sid = record.session_id
    with pytest.raises(InvalidToken) as info:
        await engine.session_predict(sid, text="abcé")
    assert (info.value.char, info.value.position) == ("é", 3)
    with pytest.raises(InvalidToken) as info:
        await engine.session_predict(sid, tokens=[1, 2, 76])
    assert (info.value.token_id, info.value.position) == (76, 2)
    with pytest.raises(InvalidInput):
        await engine.session_predict(sid, text="a", tokens=[1])
    with pytest.raises(InvalidInput):
        await engine.session_predict(sid, text="")
    with pytest.raises(InvalidInput) as too_long:
        await engine.session_predict(sid, text="a" * (engine.config.max_text_length + 1))
    assert too_long.value.code == "text_too_long"
    with pytest.raises(PositionConflict):
        await engine.session_predict(sid, text="x", expected_position=4)
    after, h_after, _ = await read_state(engine, sid)
    assert after.position == 5 and after.version == record.version
    np.testing.assert_array_equal(h_before, h_after)


async def test_a_failed_priming_leaves_no_session(engine: Engine) -> None:
    count = (await engine.session_stats()).active
    with pytest.raises(InvalidToken):
        await engine.create_session(text="naïve")
    with pytest.raises(InvalidInput):
        await engine.create_session(ttl_s=engine.config.max_session_ttl_s * 2)
    assert (await engine.session_stats()).active == count


async def test_requests_to_one_session_apply_in_arrival_order(engine: Engine) -> None:
    record, _ = await engine.create_session()
    sid = record.session_id
    # 30 requests at once, each only valid at the position its predecessors leave: all succeed only in order.
    results = await asyncio.gather(
        *(engine.session_predict(sid, text="ab", expected_position=2 * i) for i in range(30))
    )
    assert [r.record.position for r in results] == [2 * (i + 1) for i in range(30)]
    assert engine.stats().busy_sessions == 0  # per-session locks are dropped once idle


async def test_fork_branches_and_leaves_the_source_alone(engine: Engine) -> None:
    src, _ = await engine.create_session(text="To be, or ")
    fork = await engine.fork_session(src.session_id)
    assert fork.position == src.position
    a = await engine.session_predict(fork.session_id, text="not to ", top_k=10)
    b = await engine.session_predict(src.session_id, text="not to ", top_k=10)
    assert_same(a.next, b.next)
    c = await engine.session_predict(fork.session_id, text="XYZ", top_k=10)
    d = await engine.session_predict(src.session_id, text="be,", top_k=10)
    assert c.record.position == d.record.position and probs(c.next) != probs(d.next)
    with pytest.raises(SessionNotFound):
        await engine.fork_session("nope")


async def test_export_then_import_continues_exactly(engine: Engine) -> None:
    src, _ = await engine.create_session(text=TEXT[:30])
    exported = await engine.export_state(src.session_id)
    assert exported.position == 30 and exported.shape == (2, 16) and exported.dtype == "float32"
    restored, _ = await engine.create_session(state=exported)
    assert restored.position == 30
    a = await engine.session_predict(src.session_id, text=TEXT[30:], top_k=76)
    b = await engine.session_predict(restored.session_id, text=TEXT[30:], top_k=76)
    assert a.next == b.next  # bit-identical: the same state through the same graph


async def test_import_refuses_foreign_or_corrupt_states(engine: Engine) -> None:
    src, _ = await engine.create_session(text="abc")
    good = await engine.export_state(src.session_id)
    count = (await engine.session_stats()).active
    bad = [
        (PortableState("sha256:other", 3, good.shape, good.dtype, good.h, good.c), StateMismatch),
        (PortableState(good.model_fingerprint, 3, (2, 32), good.dtype, good.h, good.c), StateMismatch),
        (PortableState(good.model_fingerprint, 3, good.shape, "float16", good.h, good.c), StateMismatch),
        (PortableState(good.model_fingerprint, 3, good.shape, good.dtype, "!!!", good.c), InvalidInput),
        (PortableState(good.model_fingerprint, 3, good.shape, good.dtype, good.h[:-8], good.c), InvalidInput),
    ]
    nan = np.full((2, 16), np.nan, "<f4")
    import base64

    bad.append(
        (
            PortableState(
                good.model_fingerprint, 3, good.shape, good.dtype, base64.b64encode(nan.tobytes()).decode(), good.c
            ),
            InvalidInput,
        )
    )
    for state, error in bad:
        with pytest.raises(error):
            await engine.create_session(state=state)
    assert (await engine.session_stats()).active == count


async def test_delete_and_reset(engine: Engine) -> None:
    rec, _ = await engine.create_session(text="abc")
    reset = await engine.reset_session(rec.session_id)
    assert reset.position == 0
    fresh = await engine.session_predict(rec.session_id, text="xy", top_k=76)
    stateless = await engine.predict(text="xy", top_k=76)
    assert_same(fresh.next, stateless.next)
    await engine.delete_session(rec.session_id)
    with pytest.raises(SessionNotFound):
        await engine.get_session(rec.session_id)


async def test_model_info(engine: Engine) -> None:
    info = engine.model  # typed facts; GET /v1/model builds its document from them (tests/service/api)
    cfg = info.metadata.config
    assert info.provider == "cpu" and cfg.num_layers == 2 and cfg.hidden_size == 16
    assert "".join(info.metadata.tokenizer.chars) == "".join(sorted(TEST_VOCAB))
    assert info.state_bytes == 2 * 2 * 16 * 4 and info.state_shape == (2, 16)


def test_pieces_equal_whole_text_for_any_split(make_settings: SettingsFactory) -> None:
    """Hypothesis: random texts, random split points; also with other sessions in the same batches."""
    with asyncio.Runner() as runner:
        serving = Serving(make_settings(max_batch_delay_ms=1.0))
        eng = serving.engine
        runner.run(serving.start())

        async def check(text: str, cuts: list[int], noise: list[str]) -> None:
            whole = await eng.predict(text=text, top_k=76)
            rec, _ = await eng.create_session()
            bounds = [0, *cuts, len(text)]

            async def feed() -> list:  # type: ignore[type-arg]
                out = []
                for a, b in pairwise(bounds):
                    out = (await eng.session_predict(rec.session_id, text=text[a:b], top_k=76)).next
                return out

            async def other(piece: str) -> None:
                r, _ = await eng.create_session(text=piece)
                await eng.session_predict(r.session_id, text=piece)
                await eng.delete_session(r.session_id)

            pieces, *_ = await asyncio.gather(feed(), *(other(p) for p in noise))
            assert_same(pieces, whole.next)

        @settings(max_examples=40, deadline=None, derandomize=True)
        @given(
            text=st.text(alphabet=TEST_VOCAB, min_size=1, max_size=80),
            data=st.data(),
            noise=st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=9), max_size=6),
        )
        def prop(text: str, data: st.DataObject, noise: list[str]) -> None:
            cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=6)))
            cuts = [c for c in cuts if 0 < c < len(text)]
            runner.run(check(text, cuts, noise))
            examples.append(text)

        examples: list[str] = []
        prop()
        assert len(examples) >= 20  # hypothesis really ran many texts
        runner.run(serving.stop())


async def test_the_redis_backend_starts_without_redis_and_reports_it_unavailable(
    make_settings: SettingsFactory,
) -> None:
    # Nothing listens on this port: the model still loads (readiness then waits for the store), requests get 503.
    serving = Serving(make_settings(state_backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    eng = serving.engine
    await serving.start()
    try:
        assert eng.ready and not eng.store_available
        with pytest.raises(StateStoreUnavailable):
            await eng.create_session()
    finally:
        await serving.stop()
