"""Gate inspection: the gates come from the ONNX file's weights and end exactly where the served model ends
(state and logits), the session advances as predict would, and the gates obey the notes' equations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.app import Serving
from service.engine.engine import Engine
from service.engine.inspection import Inspector
from service.errors import InvalidInput, SessionNotFound
from tests.service.conftest import SettingsFactory, read_state

TEXT = "To be, or not"


def assert_gate_equations(layers: list, h0: np.ndarray, c0: np.ndarray) -> None:  # type: ignore[type-arg]
    for n, g in enumerate(layers):
        c_prev = np.concatenate([c0[n][None], g.c[:-1]])  # (T, H): C_{t-1}
        np.testing.assert_allclose(g.c, g.f * c_prev + g.i * g.c_tilde, atol=1e-12)  # C_t = f C_{t-1} + i c~
        np.testing.assert_allclose(g.h, g.o * np.tanh(g.c), atol=1e-12)  # h_t = o tanh(C_t)
        assert ((g.f > 0) & (g.f < 1)).all() and ((g.c_tilde > -1) & (g.c_tilde < 1)).all()


async def test_session_inspection_matches_the_served_model(engine: Engine) -> None:
    inspector = Inspector(engine)
    record, _ = await engine.create_session(text="ROMEO:\n")
    _, h0, c0 = await read_state(engine, record.session_id)
    result = await inspector.inspect(session_id=record.session_id, text=TEXT, top=76)
    # The reference's final state and logits are ONNX Runtime's (float64 against float32).
    assert max(result.deviation.values()) < 1e-4
    _, h, c = await read_state(engine, record.session_id)
    np.testing.assert_allclose(np.stack([g.h[-1] for g in result.layers]), h, atol=1e-4)
    np.testing.assert_allclose(np.stack([g.c[-1] for g in result.layers]), c, atol=1e-4)
    assert result.start_position == 7 and result.position == 7 + len(TEXT)
    assert result.record is not None and result.record.position == result.position
    assert [g.f.shape for g in result.layers] == [(len(TEXT), 16)] * 2
    assert_gate_equations(result.layers, h0, c0)
    # The session advanced exactly as predict advances it.
    whole = await engine.predict(text="ROMEO:\n" + TEXT, top_k=76)
    assert [t.id for t in result.next] == [t.id for t in whole.next]


async def test_stateless_inspection(engine: Engine) -> None:
    result = await Inspector(engine).inspect(tokens=[5, 9, 60], top=3)
    zeros = np.zeros((2, 16))
    assert_gate_equations(result.layers, zeros, zeros)
    assert result.record is None and result.position == 3 and max(result.deviation.values()) < 1e-4
    assert [t.id for t in result.next] == [t.id for t in (await engine.predict(tokens=[5, 9, 60], top_k=3)).next]


async def test_peephole_model(make_settings: SettingsFactory, tiny_peephole_model_path: Path) -> None:
    serving = Serving(make_settings(model_path=tiny_peephole_model_path))
    eng = serving.engine
    await serving.start()
    try:
        result = await Inspector(eng).inspect(text=TEXT)
        assert max(result.deviation.values()) < 1e-4
    finally:
        await serving.stop()


async def test_limits_and_errors(make_settings: SettingsFactory) -> None:
    serving = Serving(make_settings(max_inspect_length=4))
    eng = serving.engine
    await serving.start()
    try:
        inspector = Inspector(eng)
        with pytest.raises(InvalidInput) as info:
            await inspector.inspect(text="abcde")
        assert info.value.code == "text_too_long"
        with pytest.raises(SessionNotFound):
            await inspector.inspect(session_id="nope", text="ab")
        with pytest.raises(InvalidInput):
            await inspector.inspect()
    finally:
        await serving.stop()
