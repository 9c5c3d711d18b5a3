"""The session predict fast path (service/api/fast_predict.py): it takes only what FastAPI would take as it stands,
answers exactly as the route does, and hands everything else to FastAPI untouched."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api import fast_predict
from service.api.fast_predict import FastPredict
from service.api.schemas import SessionPredictRequest, plain_session_predict
from service.app import create_app
from service.logging import JsonFormatter
from tests.service.conftest import AppClient, SettingsFactory

PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True, database=None)
# A content type FastAPI reads as JSON but the fast path does not take: the same request, served by FastAPI.
VIA_FASTAPI = {"content-type": "application/json; charset=utf-8"}

FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2000),
    st.integers(min_value=2**62, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.lists(
        st.one_of(st.integers(-2, 80), st.booleans(), st.floats(allow_nan=False), st.text(max_size=1)), max_size=3
    ),
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(["text", "tokens", "top_k", "expected_position", "topk"]), FIELD_VALUES),
    FIELD_VALUES,
)


@PROPERTIES
@given(BODIES)
def test_plain_parse_agrees_with_the_request_model(body: Any) -> None:
    """Whatever the plain parse takes, pydantic takes with the same values; what it refuses goes to FastAPI."""
    data = orjson.loads(orjson.dumps(body))  # as the fast path sees it: parsed from the wire
    plain = plain_session_predict(data)
    if plain is None:
        return
    model = SessionPredictRequest.model_validate(data)
    assert (plain.text, plain.tokens, plain.top_k, plain.expected_position) == (
        model.text,
        model.tokens,
        model.top_k,
        model.expected_position,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"text": "a", "top_k": 5.0},
        {"text": "a", "top_k": True},
        {"text": "a", "top_k": "5"},
        {"tokens": [1, True]},
        {"text": "a", "tokens": [1]},
        {"text": ""},
        {},
        {"text": "a", "topk": 3},
        {"text": "a", "expected_position": -1},
        {"text": "a", "top_k": 0},
        {"text": "a", "top_k": 1025},
        ["text", "a"],
    ],
)
def test_anything_not_plainly_valid_is_left_to_fastapi(body: Any) -> None:
    assert plain_session_predict(body) is None


def scope(app: Any, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/sessions/abc/predict",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")],
        "app": app,
    }
    base.update(changes)
    return base


def test_which_requests_take_the_fast_path(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())
    fast = FastPredict(max_bytes=100)
    assert fast.session_of(scope(app)) == "abc"
    assert fast.session_of(scope(app, method="PUT")) is None
    assert fast.session_of(scope(app, path="/v1/sessions/abc/predict/")) is None
    assert fast.session_of(scope(app, path="/v1/sessions/a/b/predict")) is None
    assert fast.session_of(scope(app, path=f"/v1/sessions/{'x' * 257}/predict")) is None  # FastAPI's 422
    assert fast.session_of(scope(app, root_path="/api")) is None
    assert fast.session_of(scope(app, headers=[(b"content-type", b"application/json")])) is None  # chunked
    assert fast.session_of(scope(app, headers=[(b"content-type", b"text/plain"), (b"content-length", b"2")])) is None
    assert (
        fast.session_of(scope(app, headers=[(b"content-type", b"application/json"), (b"content-length", b"101")]))
        is None
    )
    app.dependency_overrides[object] = object  # a test's override: FastAPI must solve the dependencies
    assert fast.session_of(scope(app)) is None
    traced = create_app(make_settings(opentelemetry=True))
    assert fast.session_of(scope(traced)) is None  # FastAPI's spans come from its own handling


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per request the fast path read: whether it answered it (True) or handed it to FastAPI."""
    seen: list[bool] = []
    parse = fast_predict._parse

    def spy(body: bytes) -> Any:
        plain = parse(body)
        seen.append(plain is not None)
        return plain

    monkeypatch.setattr(fast_predict, "_parse", spy)
    return seen


@pytest.fixture
async def twins(client: AppClient) -> AsyncIterator[tuple[AppClient, str, str]]:
    """Two sessions fed the same text: one is driven through the fast path, the other through FastAPI."""
    ids = [(await client.post("/v1/sessions", json={"text": "To be"})).json()["session_id"] for _ in range(2)]
    yield client, ids[0], ids[1]


def comparable(r: Any, session_id: str) -> tuple[int, Any]:
    body = json.loads(r.text.replace(session_id, "SID"))  # error messages name the session
    body.pop("expires_at", None)
    return r.status_code, body


@pytest.mark.parametrize(
    "body",
    [
        {"text": ", or"},
        {"text": "x", "top_k": 76},
        {"tokens": [3, 4, 5], "top_k": 2},
        {"text": "x", "expected_position": 5},
        {"text": "x", "expected_position": 4},  # 409
        {"text": "de€f"},  # 422 invalid_token
        {"tokens": [3, 99]},  # 422 invalid_token
    ],
)
async def test_fast_and_fastapi_answers_are_the_same(
    twins: tuple[AppClient, str, str], fast_answers: list[bool], body: Any
) -> None:
    client, fast_id, slow_id = twins
    fast = await client.post(f"/v1/sessions/{fast_id}/predict", json=body)
    slow = await client.post(f"/v1/sessions/{slow_id}/predict", content=json.dumps(body), headers=VIA_FASTAPI)
    assert fast_answers == [True]  # the first took the fast path, the second never came near it
    assert comparable(fast, fast_id) == comparable(slow, slow_id)
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"


async def test_unknown_and_foreign_sessions_are_the_same_404(client: AppClient) -> None:
    for sid in ("nope", "somekey.AAAAAAAAAAAAAAAAAAAAAA"):
        fast = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a"})
        slow = await client.post(f"/v1/sessions/{sid}/predict", content=b'{"text": "a"}', headers=VIA_FASTAPI)
        assert fast.status_code == 404 and comparable(fast, sid) == comparable(slow, sid)


async def test_bodies_it_does_not_take_are_served_by_fastapi(
    twins: tuple[AppClient, str, str], fast_answers: list[bool]
) -> None:
    client, sid, _ = twins
    url = f"/v1/sessions/{sid}/predict"
    lax = await client.post(url, json={"text": "a", "top_k": 3.0})  # pydantic's lax int: accepted
    assert lax.status_code == 200 and len(lax.json()["next"]) == 3
    extra = await client.post(url, json={"text": "a", "topk": 3})
    assert extra.status_code == 422 and extra.json()["error"]["code"] == "invalid_request"
    assert "topk" in extra.json()["error"]["message"]
    broken = await client.post(url, content=b'{"text": "a"', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_request"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": '
        yield b'"b"}'

    chunked = await client.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 200 and chunked.json()["position"] == 7
    assert fast_answers == [False, False, False]  # read, then handed on (the chunked body was never read)


async def test_over_the_body_limit_is_413_as_before(app_factory: Any) -> None:
    async with app_factory(max_request_bytes=1024) as client:
        sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
        r = await client.post(f"/v1/sessions/{sid}/predict", json={"text": "a" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        metrics = (await client.get("/metrics")).text
        assert 'route="/v1/sessions/{id}/predict",status="413"' in metrics


async def test_log_line_and_metrics_of_a_fast_answer(client: AppClient, caplog: pytest.LogCaptureFixture) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
    with caplog.at_level(logging.INFO, logger="service.access"):
        assert (await client.post(f"/v1/sessions/{sid}/predict", json={"text": "hi"})).status_code == 200
    (line,) = (json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "service.access")
    assert line["route"] == "/v1/sessions/{id}/predict" and line["session_id"] == sid and line["status"] == 200
    metrics = (await client.get("/metrics")).text
    assert 'lstm_serve_requests_total{method="POST",route="/v1/sessions/{id}/predict",status="200"} 1.0' in metrics
    assert 'lstm_serve_model_requests_total{model="tiny-test-lstm",route="/v1/sessions/{id}/predict"' in metrics
