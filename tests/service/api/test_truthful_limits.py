"""Findings of the hostile-client review that live in the engine: a timed-out generation really changes nothing,
and the per-key stream limit is counted in the same step as its check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import AppClient, AppFactory

PROMPT = "ROMEO:\n"
KEY = {"authorization": "Bearer alice-key"}


@pytest.fixture
def slow_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make every ONNX Runtime call take at least 2 ms, so that a long generation outlives a short timeout."""

    def slow(client: AppClient) -> None:
        runtime = client.serving.runtime
        real = runtime.run

        def run(*args: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            time.sleep(0.002)
            return real(*args)

        monkeypatch.setattr(runtime, "run", run)

    yield slow


@pytest.mark.parametrize("route", ["generate", "completions"])
async def test_a_generation_that_times_out_changes_nothing(
    app_factory: AppFactory, slow_model: Any, route: str
) -> None:
    """Finding: a 504 "abandoned; nothing changed" for a non-streamed generation whose session had moved 7 -> 766."""
    async with app_factory(request_timeout_s=0.3) as client:
        slow_model(client)
        sid = (await client.post("/v1/sessions", json={"text": PROMPT})).json()["session_id"]
        before = (await client.get(f"/v1/sessions/{sid}/state")).json()
        if route == "generate":
            body = {"max_tokens": 1000, "expected_position": len(PROMPT)}
            r = await client.post(f"/v1/sessions/{sid}/generate", json=body)
        else:
            name = (await client.get("/v1/model")).json()["name"]
            body = {"model": name, "prompt": "To be", "max_tokens": 1000, "session_id": sid}
            r = await client.post("/v1/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout", r.text
        assert "nothing changed" in r.json()["error"]["message"]
        after = (await client.get(f"/v1/sessions/{sid}/state")).json()
        assert after["position"] == before["position"] == len(PROMPT)
        assert (after["h"], after["c"]) == (before["h"], before["c"])
        # The session is usable, and a generation that fits the timeout still commits.
        r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 5})
        assert r.status_code == 200 and r.json()["position"] == len(PROMPT) + 5


async def test_the_stream_limit_is_exact_under_a_burst(app_factory: AppFactory, slow_model: Any) -> None:
    """Finding: 100 stream requests sent back to back all got 200 with MAX_STREAMS_PER_KEY=64."""
    async with app_factory(api_keys="alice-key", max_streams_per_key=4, rate_limit_per_s=0) as client:
        slow_model(client)
        body = {"text": PROMPT, "max_tokens": 40, "stream": True}
        rs = await asyncio.gather(*(client.post("/v1/generate", json=body, headers=KEY) for _ in range(40)))
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) == 4 and codes.count(429) == 36, codes
        assert all(r.json()["error"]["code"] == "too_many_streams" for r in rs if r.status_code == 429)
        metrics = (await client.get("/metrics")).text
        assert "lstm_serve_streams_in_progress 0.0" in metrics  # every slot was given back
        # And the limit frees up once they are done.
        assert (await client.post("/v1/generate", json=body, headers=KEY)).status_code == 200
