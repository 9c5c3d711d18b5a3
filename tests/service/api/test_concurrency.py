"""Hundreds of sessions at once over HTTP: interleaved pieces, shared batches, and the defining property."""

from __future__ import annotations

import asyncio
import random
from itertools import accumulate, pairwise
from typing import Any

from tests.factories import TEST_VOCAB
from tests.service.conftest import AppClient

N_SESSIONS = 200


def close(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    pa = {t["id"]: t["prob"] for t in a}
    pb = {t["id"]: t["prob"] for t in b}
    return pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) <= 1e-5 for k in pa)


def random_split(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 5))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


async def test_hundreds_of_sessions_fed_in_interleaved_pieces(app_factory: Any) -> None:
    rng = random.Random(7)
    alphabet = TEST_VOCAB
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(N_SESSIONS)]
    async with app_factory(max_batch_size=64, max_batch_delay_ms=5) as client:
        runtime = client.serving.runtime
        created = await asyncio.gather(*(client.post("/v1/sessions", json={}) for _ in texts))
        sids = [r.json()["session_id"] for r in created]
        assert len(set(sids)) == N_SESSIONS

        requests = 0

        async def feed(sid: str, text: str) -> dict[str, Any]:
            nonlocal requests
            last: dict[str, Any] = {}
            for piece in random_split(rng, text):
                requests += 1
                await asyncio.sleep(rng.random() * 0.002)  # interleave with the other sessions' pieces
                r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": piece, "top_k": 76})
                assert r.status_code == 200, r.text
                last = r.json()
            return last

        runs, batches = runtime.runs, client.engine.stats().batches
        fed = await asyncio.gather(*(feed(s, t) for s, t in zip(sids, texts, strict=True)))
        assert client.engine.stats().batches - batches < requests / 3  # requests shared batches
        assert runtime.runs - runs < requests
        # Stateless predictions of the whole texts, themselves concurrent.
        whole = await asyncio.gather(*(client.post("/v1/predict", json={"text": t, "top_k": 76}) for t in texts))
        for text, got, ref in zip(texts, fed, whole, strict=True):
            assert got["position"] == len(text)
            assert close(got["next"], ref.json()["next"]), text


async def test_engine_batches_concurrent_requests_into_fewer_runs(app_factory: Any) -> None:
    async with app_factory(max_batch_size=128, max_batch_delay_ms=20) as client:
        runtime = client.serving.runtime
        sids = [(await client.post("/v1/sessions", json={})).json()["session_id"] for _ in range(100)]
        runs = runtime.runs
        rs = await asyncio.gather(*(client.post(f"/v1/sessions/{s}/predict", json={"text": "ab"}) for s in sids))
        assert all(r.status_code == 200 for r in rs)
        assert runtime.runs - runs < 100 / 4  # typically 1-2 runs for 100 requests
        metrics = (await client.get("/metrics")).text
        assert "lstm_serve_batch_size_bucket" in metrics


async def test_one_session_hammered_concurrently_loses_nothing(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
    pieces = ["To ", "be", ", ", "or ", "not ", "to ", "be"] * 5
    rs = await asyncio.gather(
        *(client.post(f"/v1/sessions/{sid}/predict", json={"text": p, "top_k": 76}) for p in pieces)
    )
    # Concurrent HTTP requests have no defined order, but the positions they report give the order the server
    # applied them in: each exactly once, one after another, the state always consistent with that order.
    applied = sorted(zip((r.json()["position"] for r in rs), pieces, strict=True))
    ends, order = [end for end, _ in applied], [p for _, p in applied]
    assert ends == list(accumulate(len(p) for p in order))
    text = "".join(order)
    last = max((r.json() for r in rs), key=lambda b: b["position"])
    whole = (await client.post("/v1/predict", json={"text": text, "top_k": 76})).json()
    assert close(last["next"], whole["next"])
