"""The session routes: create, predict, get, delete, reset, fork, export/restore, and their errors."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any

import numpy as np

from tests.service.conftest import AppClient

TEXT = "To be, or not to be, that is the question"


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return dict(body["error"])


def same_next(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [t["id"] for t in a] == [t["id"] for t in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x["prob"] - y["prob"]) <= 1e-5


async def new(client: AppClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_readme_flow(client: AppClient) -> None:
    created = await new(client)
    assert created["position"] == 0 and "next" not in created
    datetime.fromisoformat(created["expires_at"])
    sid = created["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "To be, or not to "})
    assert r.status_code == 200
    body = r.json()
    assert body["session_id"] == sid and body["position"] == 17 and len(body["next"]) == 5
    stateless = (await client.post("/v1/predict", json={"text": "To be, or not to "})).json()
    same_next(body["next"], stateless["next"])


async def test_create_primed_returns_next(client: AppClient) -> None:
    created = await new(client, text="To be", top_k=3, ttl_seconds=120)
    assert created["position"] == 5 and len(created["next"]) == 3
    info = (await client.get(f"/v1/sessions/{created['session_id']}")).json()
    assert info["ttl_seconds"] == 120 and info["position"] == 5
    for key in ("created_at", "last_used_at", "expires_at"):
        datetime.fromisoformat(info[key])


async def test_expected_position_conflict_changes_nothing(client: AppClient) -> None:
    sid = (await new(client, text="abc"))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "d", "expected_position": 2})
    err = assert_error(r, 409, "position_conflict")
    assert err["details"] == {"expected_position": 2, "position": 3}
    ok = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "d", "expected_position": 3, "top_k": 76})
    assert ok.status_code == 200 and ok.json()["position"] == 4
    same_next(ok.json()["next"], (await client.post("/v1/predict", json={"text": "abcd", "top_k": 76})).json()["next"])


async def test_invalid_token_names_char_and_position_and_changes_nothing(client: AppClient) -> None:
    sid = (await new(client, text="abc"))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "de€f"})
    err = assert_error(r, 422, "invalid_token")
    assert err["details"] == {"char": "€", "position": 2}
    assert "'€'" in err["message"] and "position 2" in err["message"]
    r = await client.post(f"/v1/sessions/{sid}/predict", json={"tokens": [3, -1]})
    assert assert_error(r, 422, "invalid_token")["details"] == {"token_id": -1, "position": 1}
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 3


async def test_unknown_deleted_expired_and_evicted_are_told_apart(app_factory: Any) -> None:
    async with app_factory(max_sessions=2, evict_idle_after_s=0) as client:
        assert_error(await client.get("/v1/sessions/nope"), 404, "session_not_found")
        a = (await new(client))["session_id"]
        assert (await client.delete(f"/v1/sessions/{a}")).status_code == 204
        assert_error(await client.get(f"/v1/sessions/{a}"), 404, "session_not_found")
        assert_error(await client.delete(f"/v1/sessions/{a}"), 404, "session_not_found")
        short = (await new(client, ttl_seconds=0.05))["session_id"]
        await asyncio.sleep(0.1)
        err = assert_error(
            await client.post(f"/v1/sessions/{short}/predict", json={"text": "a"}), 404, "session_expired"
        )
        assert err["details"] == {"reason": "ttl"}
        b = (await new(client))["session_id"]
        await new(client)
        await new(client)  # the store holds 2: b, the least recently used, is evicted
        err = assert_error(await client.post(f"/v1/sessions/{b}/reset"), 404, "session_expired")
        assert err["details"] == {"reason": "capacity"}
        metrics = (await client.get("/metrics")).text
        for reason, n in (("ttl", 1), ("capacity", 1), ("deleted", 1)):
            assert f'lstm_serve_sessions_evicted_total{{reason="{reason}"}} {n}.0' in metrics


async def test_too_many_sessions_is_429_with_retry_after(app_factory: Any) -> None:
    async with app_factory(max_sessions=2, evict_idle_after_s=30) as client:
        first = (await new(client))["session_id"]
        await new(client)
        r = await client.post("/v1/sessions", json={"text": "abc"})
        assert_error(r, 429, "too_many_sessions")
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert_error(await client.post(f"/v1/sessions/{first}/fork"), 429, "too_many_sessions")
        assert (await client.get("/v1/model")).json()["sessions"]["active"] == 2
        assert (await client.delete(f"/v1/sessions/{first}")).status_code == 204
        await new(client)  # room again


async def test_reset_returns_to_zero_state(client: AppClient) -> None:
    sid = (await new(client, text="xyz"))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/reset")
    assert r.status_code == 200 and r.json()["position"] == 0
    after = (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "ab", "top_k": 76})).json()
    same_next(after["next"], (await client.post("/v1/predict", json={"text": "ab", "top_k": 76})).json()["next"])


async def test_fork_is_an_independent_copy(client: AppClient) -> None:
    sid = (await new(client, text="To be, or "))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/fork", json={"ttl_seconds": 60})
    assert r.status_code == 201
    fork = r.json()
    assert fork["forked_from"] == sid and fork["position"] == 10 and fork["ttl_seconds"] == 60
    no_body = await client.post(f"/v1/sessions/{sid}/fork")
    assert no_body.status_code == 201
    a = (await client.post(f"/v1/sessions/{fork['session_id']}/predict", json={"text": "not"})).json()
    b = (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "not"})).json()
    same_next(a["next"], b["next"])
    await client.post(f"/v1/sessions/{fork['session_id']}/predict", json={"text": "QQQ"})
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 13
    assert (await client.get(f"/v1/sessions/{fork['session_id']}")).json()["position"] == 16


async def test_export_restore_continues_exactly(client: AppClient) -> None:
    sid = (await new(client, text=TEXT[:20]))["session_id"]
    r = await client.get(f"/v1/sessions/{sid}/state")
    assert r.status_code == 200
    state = r.json()
    model = (await client.get("/v1/model")).json()
    assert state["model_fingerprint"] == model["fingerprint"]
    assert state["position"] == 20 and state["shape"] == [2, 16] and state["dtype"] == "float32"
    h = np.frombuffer(base64.b64decode(state["h"]), "<f4").reshape(2, 16)
    assert np.isfinite(h).all() and h.any()
    restored = await new(client, state=state, text=TEXT[20:30], top_k=76)
    assert restored["position"] == 30
    original = (await client.post(f"/v1/sessions/{sid}/predict", json={"text": TEXT[20:30], "top_k": 76})).json()
    assert restored["next"] == original["next"]
    whole = (await client.post("/v1/predict", json={"text": TEXT[:30], "top_k": 76})).json()
    same_next(restored["next"], whole["next"])


async def test_restore_refuses_mismatched_states(client: AppClient) -> None:
    sid = (await new(client, text="abc"))["session_id"]
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    before = (await client.get("/v1/model")).json()["sessions"]["active"]
    cases = [
        ({**state, "model_fingerprint": "sha256:" + "0" * 64}, 422, "state_mismatch"),
        ({**state, "shape": [2, 32]}, 422, "state_mismatch"),
        ({**state, "dtype": "float64"}, 422, "state_mismatch"),
        ({**state, "h": "not base64!"}, 422, "invalid_state"),
        ({**state, "c": base64.b64encode(b"\0" * 12).decode()}, 422, "invalid_state"),
        ({**state, "position": -1}, 422, "invalid_request"),
        ({**state, "extra": 1}, 422, "invalid_request"),
        ({k: v for k, v in state.items() if k != "h"}, 422, "invalid_request"),
    ]
    for bad, status, code in cases:
        r = await client.post("/v1/sessions", json={"state": bad})
        err = assert_error(r, status, code)
        if code == "state_mismatch":
            assert "model" in err["message"] or "shape" in err["message"] or "dtype" in err["message"]
    assert (await client.get("/v1/model")).json()["sessions"]["active"] == before


async def test_create_without_a_body(client: AppClient) -> None:
    r = await client.post("/v1/sessions")
    assert r.status_code == 201 and r.json()["position"] == 0


async def test_active_sessions_gauge_follows_every_removal(app_factory: Any) -> None:
    async with app_factory(max_sessions=10) as client:
        short = (await new(client, ttl_seconds=0.05))["session_id"]
        keep = (await new(client))["session_id"]
        await client.post(f"/v1/sessions/{keep}/fork")
        await asyncio.sleep(0.1)
        assert (await client.get(f"/v1/sessions/{short}")).status_code == 404  # expired lazily, on access
        await client.delete(f"/v1/sessions/{keep}")
        metrics = (await client.get("/metrics")).text
        assert "lstm_serve_active_sessions 1.0" in metrics  # only the fork is left
        assert "lstm_serve_sessions_created_total 3.0" in metrics
