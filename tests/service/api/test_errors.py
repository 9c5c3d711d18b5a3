"""Every error has one shape and the right status; no input, however malformed, gives a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import AppClient


def assert_error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text
    return dict(body["error"])


async def test_malformed_bodies(client: AppClient) -> None:
    raw = [b"{", b"[1, 2]", b'"text"', b"null", b"", b'{"text": "a"} trailing']
    for body in raw:
        r = await client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert_error(r, 422, "invalid_request")
    r = await client.post("/v1/predict", content=b'{"text": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert_error(r, r.status_code, "invalid_request")


async def test_invalid_fields(client: AppClient) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"text": ""},
        {"tokens": []},
        {"text": 5},
        {"tokens": ["a"]},
        {"tokens": [True]},
        {"tokens": [1.5]},
        {"text": "a", "top_k": 0},
        {"text": "a", "top_k": 5000},
        {"text": "a", "top_k": "many"},
        {"text": "a", "tokens": [1]},
        {"text": "a", "topk": 3},
        {"text": None, "tokens": None},
    ]
    for body in cases:
        err = assert_error(await client.post("/v1/predict", json=body), 422, "invalid_request")
        assert err["details"]["errors"], body


async def test_invalid_token_details_even_for_odd_characters(client: AppClient) -> None:
    # A lone surrogate is not a character at all: refused by validation, and the error still encodes.
    r = await client.post("/v1/predict", content=b'{"text": "ab\\ud800"}', headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request")
    r = await client.post("/v1/predict", json={"tokens": [1, 10**30]})
    assert assert_error(r, 422, "invalid_token")["details"] == {"token_id": 10**30, "position": 1}
    r = await client.post("/v1/predict", json={"text": "ok\U0001f600"})
    assert assert_error(r, 422, "invalid_token")["details"]["char"] == "\U0001f600"


async def test_text_length_limit(app_factory: Any) -> None:
    async with app_factory(max_text_length=10) as client:
        assert (await client.post("/v1/predict", json={"text": "a" * 10})).status_code == 200
        assert_error(await client.post("/v1/predict", json={"text": "a" * 11}), 422, "text_too_long")
        assert_error(await client.post("/v1/sessions", json={"tokens": [1] * 11}), 422, "text_too_long")


async def test_body_size_limit(app_factory: Any) -> None:
    async with app_factory(max_request_bytes=2048) as client:
        big = {"text": "a" * 4096}
        assert_error(await client.post("/v1/predict", json=big), 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts what arrives
            yield b'{"text": "'
            for _ in range(10):
                yield b"a" * 500
            yield b'"}'

        r = await client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "payload_too_large")
        assert (await client.post("/v1/predict", json={"text": "a" * 1000})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'lstm_serve_requests_total{method="POST",route="/v1/predict",status="413"} 2.0' in metrics


async def test_unknown_routes_and_methods(client: AppClient) -> None:
    assert_error(await client.get("/v2/nothing"), 404, "not_found")
    r = await client.put("/v1/predict", json={})
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    assert_error(await client.get("/v1/sessions/" + "x" * 300), 422, "invalid_request")
    assert_error(await client.get("/v1/sessions/%00%ff"), 404, "session_not_found")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=30) | JSON,
        "tokens": st.lists(st.integers(-5, 100), max_size=8) | JSON,
        "top_k": st.integers(-3, 2000) | JSON,
        "expected_position": st.integers(-2, 50) | JSON,
        "ttl_seconds": st.floats(allow_nan=False) | JSON,
        "state": JSON,
    },
)


def test_no_input_gives_a_500(app_factory: Any) -> None:
    import asyncio

    with asyncio.Runner() as runner:
        cm = app_factory()
        client: AppClient = runner.run(cm.__aenter__())
        sid = runner.run(client.post("/v1/sessions", json={})).json()["session_id"]
        routes = ["/v1/predict", "/v1/sessions", f"/v1/sessions/{sid}/predict", f"/v1/sessions/{sid}/fork"]

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(route=st.sampled_from(routes), body=FIELDS | JSON)
        def fuzz(route: str, body: Any) -> None:
            r = runner.run(
                client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            )
            assert r.status_code < 500, (route, body, r.text)
            if r.status_code >= 400:
                assert_error(r, r.status_code)

        fuzz()
        runner.run(cm.__aexit__(None, None, None))
