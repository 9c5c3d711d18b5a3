"""API keys, session ownership on every route, per-key limits, the request timeout and the rejections metric."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api.errors import engine_error_response
from service.app import create_app
from service.errors import TooManyStreams
from service.security.keys import hash_key
from tests.service.conftest import AppClient, AppFactory, SettingsFactory

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"
A = {"Authorization": f"Bearer {ALICE}"}
B = {"Authorization": f"Bearer {BOB}"}
KEYS = {"api_keys": f"{ALICE},{BOB}"}


def rejections(metrics_text: str, reason: str) -> float:
    found = re.search(rf'^lstm_serve_rejections_total{{reason="{reason}"}} (\S+)$', metrics_text, re.M)
    assert found, reason
    return float(found.group(1))


async def test_missing_or_wrong_key_is_401_and_open_routes_stay_open(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ALICE}"}):
            r = await client.post("/v1/predict", json={"text": "To be"}, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = await client.post("/v2/models/x/infer", json={})
        assert r.status_code == 401 and isinstance(r.json()["error"], str)  # the protocol's own error shape
        assert (await client.get("/v1/model")).status_code == 401
        assert (await client.post("/v1/predict", json={"text": "To be"}, headers=A)).status_code == 200
        for open_route in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(open_route)).status_code == 200, open_route
        metrics = (await client.get("/metrics")).text
        assert rejections(metrics, "unauthorized") == 5  # three bad headers, /v2 and /v1/model
        assert ALICE not in metrics


async def test_hashed_key_file(app_factory: AppFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\nalice {hash_key(ALICE)}\n\n")
    async with app_factory(api_key_file=keys) as client:
        assert (await client.post("/v1/predict", json={"text": "a"}, headers=A)).status_code == 200
        assert (await client.post("/v1/predict", json={"text": "a"}, headers=B)).status_code == 401


async def test_another_keys_session_does_not_exist_on_any_route(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS) as client:
        created = (await client.post("/v1/sessions", json={"text": "ROMEO:\n"}, headers=A)).json()
        sid = created["session_id"]
        before = (await client.get(f"/v1/sessions/{sid}/state", headers=A)).json()
        attempts: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", f"/v1/sessions/{sid}", None),
            ("GET", f"/v1/sessions/{sid}/state", None),
            ("POST", f"/v1/sessions/{sid}/predict", {"text": "a"}),
            ("POST", f"/v1/sessions/{sid}/generate", {"max_tokens": 3}),
            ("POST", f"/v1/sessions/{sid}/generate", {"max_tokens": 3, "stream": True}),
            ("POST", f"/v1/sessions/{sid}/fork", None),
            ("POST", f"/v1/sessions/{sid}/reset", None),
            ("POST", f"/v1/sessions/{sid}/inspect", {"text": "a"}),
            ("DELETE", f"/v1/sessions/{sid}", None),
            (
                "POST",
                "/v1/completions",
                {"model": client.engine.model.metadata.name, "prompt": "a", "max_tokens": 2, "session_id": sid},
            ),
        ]
        for method, url, body in attempts:
            r = await client.request(method, url, json=body, headers=B)
            assert r.status_code == 404, (method, url, r.text)
            assert r.json()["error"]["code"] == "session_not_found", (method, url)
            assert "expired" not in r.text  # existence is not revealed
        # Alice's session is untouched and still hers.
        assert (await client.get(f"/v1/sessions/{sid}/state", headers=A)).json() == before
        fork = (await client.post(f"/v1/sessions/{sid}/fork", headers=A)).json()
        assert (await client.get(f"/v1/sessions/{fork['session_id']}", headers=B)).status_code == 404
        assert (await client.get(f"/v1/sessions/{fork['session_id']}", headers=A)).status_code == 200


def test_websocket_needs_a_key_and_its_own_session(make_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_settings(**KEYS))) as http:
        sid = http.post("/v1/sessions", json={"text": "ROMEO:\n"}, headers=A).json()["session_id"]
        with pytest.raises(WebSocketDisconnect), http.websocket_connect(f"/v1/sessions/{sid}/stream") as ws:
            ws.receive_json()
        with http.websocket_connect(f"/v1/sessions/{sid}/stream", headers=B) as ws:
            assert ws.receive_json()["error"]["code"] == "session_not_found"
        with http.websocket_connect(f"/v1/sessions/{sid}/stream", headers=A) as ws:
            ws.send_json({"text": "a"})
            assert ws.receive_json()["position"] == len("ROMEO:\n") + 1


async def test_v2_sequence_ids_are_namespaced_by_key(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS) as client:
        name = client.engine.model.metadata.name

        async def infer(headers: dict[str, str], ids: list[int], **params: Any) -> httpx.Response:
            body = {
                "inputs": [{"name": "input_ids", "shape": [1, len(ids)], "datatype": "INT64", "data": ids}],
                "parameters": {"sequence_id": 1, **params},
            }
            return await client.post(f"/v2/models/{name}/infer", json=body, headers=headers)

        assert (await infer(A, [3, 4], sequence_start=True)).status_code == 200
        refused = await infer(B, [5])  # Bob never started his sequence 1
        assert refused.status_code == 400 and "never started" in refused.json()["error"]
        assert (await infer(B, [5], sequence_start=True)).status_code == 200
        alone = (await infer(A, [5])).json()["outputs"][0]["data"]
        fresh = await client.post("/v1/predict", json={"tokens": [3, 4, 5], "top_k": 1}, headers=A)
        best = max(range(len(alone)), key=alone.__getitem__)
        assert best == fresh.json()["next"][0]["id"]  # Alice's sequence saw 3, 4, 5: Bob's start reset nothing


async def test_rate_limit_per_key(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS, rate_limit_per_s=0.01, rate_limit_burst=3) as client:
        codes = [(await client.get("/v1/model", headers=A)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = await client.get("/v1/model", headers=A)
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert (await client.get("/v1/model", headers=B)).status_code == 200  # Bob has his own bucket
        assert rejections((await client.get("/metrics")).text, "rate_limited") == 3


async def test_sessions_per_key(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS, max_sessions_per_key=2) as client:
        ids = [(await client.post("/v1/sessions", headers=A)).json()["session_id"] for _ in range(2)]
        for refused in (
            await client.post("/v1/sessions", headers=A),
            await client.post(f"/v1/sessions/{ids[0]}/fork", headers=A),
        ):
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_sessions"
            assert refused.json()["error"]["details"]["per_key"] is True
            assert "retry-after" in refused.headers
        assert (await client.post("/v1/sessions", headers=B)).status_code == 201  # Bob's quota is his own
        assert (await client.delete(f"/v1/sessions/{ids[0]}", headers=A)).status_code == 204
        assert (await client.post("/v1/sessions", headers=A)).status_code == 201
        assert (await client.engine.session_stats()).active == 3
        assert rejections((await client.get("/metrics")).text, "too_many_sessions") == 2


def test_too_many_streams_is_429_with_retry_after() -> None:
    # The limit itself is tested on the generator (tests/service/engine/test_stream_limits.py): an in-process
    # client buffers a whole stream, so it cannot hold one open while sending another.
    response = engine_error_response(TooManyStreams(4))
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert json.loads(bytes(response.body))["error"]["code"] == "too_many_streams"


async def test_limits_are_counted(client: AppClient) -> None:
    limit = client.engine.config.max_text_length
    assert (await client.post("/v1/predict", json={"text": "a" * (limit + 1)})).json()["error"][
        "code"
    ] == "text_too_long"
    r = await client.post("/v1/generate", json={"text": "a", "max_tokens": 1001})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_tokens"
    big = await client.post(
        "/v1/predict", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert big.status_code == 413
    metrics = (await client.get("/metrics")).text
    for reason in ("text_too_long", "too_many_tokens", "payload_too_large"):
        assert rejections(metrics, reason) == 1, reason


async def test_request_timeout_answers_504_and_changes_nothing(app_factory: AppFactory) -> None:
    # 1 s: the set-up requests before the held lock must not time out on a loaded machine (the first one runs the
    # model cold); the predict behind the lock waits past it whatever its length.
    async with app_factory(request_timeout_s=1.0) as client:
        sid = (await client.post("/v1/sessions", json={"text": "ROMEO:\n"})).json()["session_id"]
        before = (await client.get(f"/v1/sessions/{sid}/state")).json()
        # Hold the session's lock, as a long request to it would: the next request waits past the timeout.
        async with client.engine.session(sid):
            r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        assert (await client.get(f"/v1/sessions/{sid}/state")).json() == before
        assert (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"})).status_code == 200
        assert rejections((await client.get("/metrics")).text, "request_timeout") == 1


@pytest.fixture
def metrics_port_app(make_settings: SettingsFactory, unused_tcp_port: int) -> Iterator[tuple[TestClient, int]]:
    with TestClient(create_app(make_settings(metrics_port=unused_tcp_port))) as http:
        yield http, unused_tcp_port


def test_metrics_on_their_own_port(metrics_port_app: tuple[TestClient, int]) -> None:
    http, port = metrics_port_app
    assert http.post("/v1/predict", json={"text": "a"}).status_code == 200
    assert http.get("/metrics").status_code == 404
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'lstm_serve_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in text


async def test_openapi_declares_the_bearer_scheme_when_keys_are_on(app_factory: AppFactory) -> None:
    async with app_factory(**KEYS) as client:
        doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/sessions/{id}/predict"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "401" in doc["paths"]["/v1/predict"]["post"]["responses"]


async def test_the_openai_client_sends_its_api_key(app_factory: AppFactory) -> None:
    openai = pytest.importorskip("openai")
    async with app_factory(**KEYS) as client:
        transport = client._transport
        name = client.engine.model.metadata.name
        async with httpx.AsyncClient(transport=transport) as http:
            good = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=ALICE, http_client=http, max_retries=0)
            done = await good.completions.create(model=name, prompt="ROMEO:\n", max_tokens=4, seed=1)
            assert len(done.choices[0].text) <= 4 and done.usage.completion_tokens == 4
            bad = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="nope", http_client=http, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                await bad.completions.create(model=name, prompt="ROMEO:\n", max_tokens=4)
