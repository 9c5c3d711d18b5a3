"""Health, readiness, metrics, model info, the OpenAPI description and the request log."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.logging import JsonFormatter
from tests.service.conftest import AppClient, SettingsFactory


async def test_readyz_is_503_until_loaded_and_warm_then_while_draining(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert (await client.post("/v1/predict", json={"text": "a"})).json()["error"]["code"] == "not_ready"
        async with app.router.lifespan_context(app):
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ready"}
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        r = await client.post("/v1/sessions", json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"


async def test_model_info(client: AppClient) -> None:
    info = (await client.get("/v1/model")).json()
    assert info["name"] == "tiny-test-lstm" and info["version"] == "0"
    assert info["fingerprint"].startswith("sha256:") and info["provider"] == "cpu"
    assert (info["layers"], info["hidden_size"], info["peephole"], info["vocab_size"]) == (2, 16, False, 76)
    assert len(info["vocabulary"]) == 76
    assert info["batching"] == {"max_batch_size": 32, "max_batch_delay_ms": 2.0}
    assert info["sessions"]["max_sessions"] == 1000


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def test_metrics(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={"text": "abc"})).json()["session_id"]
    await client.post(f"/v1/sessions/{sid}/predict", json={"text": "de"})
    await client.post("/v1/sessions/nope/predict", json={"text": "de"})
    await client.delete(f"/v1/sessions/{sid}")
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    for name in (
        "lstm_serve_requests_total",
        "lstm_serve_request_latency_seconds_bucket",
        "lstm_serve_inference_latency_seconds_bucket",
        "lstm_serve_inference_cpu_seconds_total",
        "lstm_serve_batch_size_bucket",
        "lstm_serve_queue_wait_seconds_bucket",
        "lstm_serve_tokens_total",
        "lstm_serve_active_sessions",
        "lstm_serve_sessions_created_total",
        "lstm_serve_sessions_evicted_total",
        "lstm_serve_model_info",
    ):
        assert name in found, name
    # The ORT thread's CPU in the runs is some of their wall time, never more (the rest was waiting).
    cpu = found["lstm_serve_inference_cpu_seconds_total"][0].value
    wall = found["lstm_serve_inference_latency_seconds_sum"][0].value
    assert 0 < cpu <= wall + 1e-3
    routes = {s.labels["route"] for s in found["lstm_serve_requests_total"]}
    assert "/v1/sessions/{id}/predict" in routes and "/v1/sessions/{id}" in routes
    assert not any(sid in r or "nope" in r for r in routes)  # never a raw session id
    statuses = {(s.labels["route"], s.labels["status"]) for s in found["lstm_serve_requests_total"]}
    assert ("/v1/sessions/{id}/predict", "404") in statuses and ("/v1/sessions/{id}", "204") in statuses
    info = found["lstm_serve_model_info"][0]
    assert info.labels["name"] == "tiny-test-lstm" and info.labels["provider"] == "cpu" and info.value == 1
    tokens = {s.labels["kind"]: s.value for s in found["lstm_serve_tokens_total"]}
    assert tokens["prompt"] >= 5 and tokens["generated"] == 0
    assert found["lstm_serve_active_sessions"][0].value == 0
    assert found["lstm_serve_sessions_created_total"][0].value == 1


async def test_openapi_describes_every_route_field_and_error(client: AppClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    expected = {
        ("/v1/predict", "post"),
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}/predict", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/reset", "post"),
        ("/v1/sessions/{id}/fork", "post"),
        ("/v1/sessions/{id}/state", "get"),
        ("/v1/model", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    }
    ops = {(p, m): op for p, item in spec["paths"].items() for m, op in item.items()}
    assert expected <= set(ops)
    for key, op in ops.items():
        assert op.get("description") or op.get("summary"), key
    session_ops = [op for (p, _), op in ops.items() if "{id}" in p]
    for op in session_ops:
        assert "404" in op["responses"]
    assert {"404", "409", "422", "413", "503"} <= set(ops[("/v1/sessions/{id}/predict", "post")]["responses"])
    assert "429" in ops[("/v1/sessions", "post")]["responses"]
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # every documented 422 has the error shape
    assert schemas["ErrorResponse"]["properties"]["error"]
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), (name, field)


async def test_one_structured_log_line_per_request(client: AppClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
        await client.post(f"/v1/sessions/{sid}/predict", json={"text": "hi"})
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 2
    created, predicted = (json.loads(JsonFormatter().format(r)) for r in lines)
    assert created["route"] == "/v1/sessions" and created["status"] == 201 and created["session_id"] == sid
    assert predicted["route"] == "/v1/sessions/{id}/predict" and predicted["session_id"] == sid
    assert predicted["method"] == "POST" and predicted["latency_ms"] > 0 and predicted["msg"] == "request"
