"""The per-request cost cap (max_request_tokens: rows x length token steps) on every route, V2's 413 in the V2
shape, and a WebSocket frame of deeply nested JSON answered with an error frame."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from tests.service.conftest import AppFactory, SettingsFactory

MODEL = "tiny-test-lstm"
INFER = f"/v2/models/{MODEL}/infer"


def v2_body(rows: np.ndarray, **parameters: Any) -> bytes:
    tensor = {"name": "input_ids", "datatype": "INT64", "shape": list(rows.shape), "data": rows.ravel().tolist()}
    body: dict[str, Any] = {"inputs": [tensor]}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body, separators=(",", ":")).encode()


def v1_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return dict(err)


async def test_v2_infer_of_4096_rows_by_127_is_refused_at_once(app_factory: AppFactory) -> None:
    # The request that held the model for 38 s: 520,192 token steps in one stateless V2 request.
    async with app_factory(max_request_bytes=4 * 1_048_576) as client:
        body = v2_body(np.ones((4096, 127), dtype=np.int64))
        started = time.perf_counter()
        r = await client.post(INFER, content=body, headers={"content-type": "application/json"})
        elapsed = time.perf_counter() - started
        assert r.status_code == 400, r.text[:300]
        message = r.json()["error"]
        assert isinstance(message, str) and "520192" in message and "8192" in message, message
        assert elapsed < 5, elapsed
        # Within the cap, rows x length is served.
        ok = await client.post(INFER, content=v2_body(np.ones((64, 128), dtype=np.int64)))
        assert ok.status_code == 200, ok.text[:300]
        assert ok.json()["outputs"][0]["shape"] == [64, 76]


async def test_the_cap_is_a_setting_and_applies_to_every_route(app_factory: AppFactory) -> None:
    async with app_factory(max_request_tokens=100) as client:
        # V2 stateless: 4 rows x 26 = 104 > 100; 4 x 25 passes.
        r = await client.post(INFER, content=v2_body(np.ones((4, 26), dtype=np.int64)))
        assert r.status_code == 400 and "limit is 100" in r.json()["error"]
        assert (await client.post(INFER, content=v2_body(np.ones((4, 25), dtype=np.int64)))).status_code == 200
        # V2 sequence: one row of 101.
        r = await client.post(
            INFER, content=v2_body(np.ones((1, 101), dtype=np.int64), sequence_id=7, sequence_start=True)
        )
        assert r.status_code == 400 and "limit is 100" in r.json()["error"]
        # v1 routes: 422 text_too_long naming the limit.
        long_text = "a" * 101
        for path, body in (
            ("/v1/predict", {"text": long_text}),
            ("/v1/predict", {"tokens": [1] * 101}),
            ("/v1/sessions", {"text": long_text}),
            ("/v1/generate", {"text": long_text, "max_tokens": 1}),
            ("/v1/completions", {"model": MODEL, "prompt": long_text, "max_tokens": 1}),
        ):
            err = v1_error(await client.post(path, json=body), 422, "text_too_long")
            assert "100" in err["message"], (path, err)
        sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
        for path in (f"/v1/sessions/{sid}/predict", f"/v1/sessions/{sid}/generate"):
            v1_error(await client.post(path, json={"text": long_text}), 422, "text_too_long")
        assert (await client.post("/v1/predict", json={"text": "a" * 100})).status_code == 200


async def test_inspection_is_held_to_the_cap_too(app_factory: AppFactory) -> None:
    async with app_factory(max_request_tokens=10) as client:
        v1_error(await client.post("/v1/inspect", json={"text": "a" * 11}), 422, "text_too_long")
        assert (await client.post("/v1/inspect", json={"text": "a" * 10})).status_code == 200


async def test_v2_payload_too_large_has_the_v2_shape(app_factory: AppFactory) -> None:
    async with app_factory(max_request_bytes=2048) as client:
        body = v2_body(np.ones((1, 2000), dtype=np.int64))
        r = await client.post(INFER, content=body)
        assert r.status_code == 413
        assert isinstance(r.json()["error"], str) and "2048" in r.json()["error"], r.text
        # The v1 routes keep the service's shape.
        r = await client.post("/v1/predict", content=b'{"text": "' + b"a" * 3000 + b'"}')
        v1_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("depth", [982, 5_000, 100_000])
def test_a_deeply_nested_websocket_frame_gets_an_error_frame_and_the_socket_stays_usable(
    make_settings: SettingsFactory, depth: int
) -> None:
    with TestClient(create_app(make_settings())) as http:
        sid = http.post("/v1/sessions", json={}).json()["session_id"]
        with http.websocket_connect(f"/v1/sessions/{sid}/stream") as ws:
            ws.send_text('{"text": ' + "[" * depth + "]" * depth + "}")
            error = ws.receive_json()
            assert error["error"]["code"] == "invalid_request", error
            ws.send_json({"text": "ab"})
            assert ws.receive_json()["position"] == 2
