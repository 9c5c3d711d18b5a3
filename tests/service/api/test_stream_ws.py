"""WebSocket /v1/sessions/{id}/stream: feed and generate frames in order, error frames that leave the socket
usable, and a close mid-generation that leaves the session consistent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from tests.service.conftest import SettingsFactory

PROMPT = "ROMEO:\n"


@pytest.fixture
def http(make_settings: SettingsFactory) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as client:
        yield client


def session(http: TestClient, text: str = PROMPT) -> str:
    return str(http.post("/v1/sessions", json={"text": text}).json()["session_id"])


def test_feed_and_generate_frames_in_order(http: TestClient) -> None:
    sid = session(http)
    with http.websocket_connect(f"/v1/sessions/{sid}/stream") as ws:
        ws.send_json({"text": "But soft", "top_k": 3})
        ws.send_json({"generate": {"max_tokens": 8, "temperature": 0.7, "seed": 5}})
        ws.send_json({"tokens": [3, 4], "top_k": 2})
        fed = ws.receive_json()
        tokens = [ws.receive_json() for _ in range(8)]
        final = ws.receive_json()
        after = ws.receive_json()
    assert fed["position"] == len(PROMPT) + 8 and len(fed["next"]) == 3
    stateless = http.post("/v1/predict", json={"text": PROMPT + "But soft", "top_k": 3}).json()
    assert [t["id"] for t in fed["next"]] == [t["id"] for t in stateless["next"]]
    assert [t["position"] for t in tokens] == list(range(len(PROMPT) + 9, len(PROMPT) + 17))
    assert final == {
        "text": "".join(t["token"] for t in tokens),
        "tokens": [t["id"] for t in tokens],
        "finish_reason": "length",
        "position": len(PROMPT) + 16,
    }
    assert after["position"] == len(PROMPT) + 18  # handled after the generation, as sent
    # The generate frame generated what the HTTP route generates from the same text and seed.
    plain = http.post(
        "/v1/generate", json={"text": PROMPT + "But soft", "max_tokens": 8, "temperature": 0.7, "seed": 5}
    ).json()
    assert plain["tokens"] == final["tokens"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_request"),
        ("[1, 2]", "invalid_request"),
        ('{"text": "a", "bogus": 1}', "invalid_request"),
        ('{"text": "é"}', "invalid_token"),
        ('{"generate": {"max_tokens": 100000}}', "too_many_tokens"),
        ('{"generate": {"stream": true}}', "invalid_request"),
        ('{"text": "a", "expected_position": 0}', "position_conflict"),
    ],
)
def test_malformed_frames_get_an_error_frame_and_the_socket_stays_usable(
    http: TestClient, frame: str, code: str
) -> None:
    sid = session(http)
    with http.websocket_connect(f"/v1/sessions/{sid}/stream") as ws:
        ws.send_text(frame)
        error: dict[str, Any] = ws.receive_json()
        assert error["error"]["code"] == code, error
        ws.send_json({"text": "ab"})
        assert ws.receive_json()["position"] == len(PROMPT) + 2


def test_unknown_session_is_an_error_frame_then_close(http: TestClient) -> None:
    with http.websocket_connect("/v1/sessions/nope/stream") as ws:
        assert ws.receive_json()["error"]["code"] == "session_not_found"
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
    assert info.value.code == 4404


def test_closing_mid_generation_never_corrupts_the_session(http: TestClient) -> None:
    sid = session(http)
    with http.websocket_connect(f"/v1/sessions/{sid}/stream") as ws:
        ws.send_json({"generate": {"max_tokens": 1000, "temperature": 0}})
        received = [ws.receive_json() for _ in range(3)]
    position = http.get(f"/v1/sessions/{sid}").json()["position"]
    # The server may have sent more frames than were read before it saw the close; whatever it kept is a prefix
    # of the generation, and the session is usable at once (the generation's lock is released).
    assert len(PROMPT) + 3 <= position < len(PROMPT) + 1000
    full = http.post("/v1/generate", json={"text": PROMPT, "max_tokens": 1000, "temperature": 0}).json()
    kept = full["text"][: position - len(PROMPT)]
    assert kept.startswith("".join(t["token"] for t in received))
    after = http.post(f"/v1/sessions/{sid}/predict", json={"text": "a", "top_k": 5}).json()
    whole = http.post("/v1/predict", json={"text": PROMPT + kept + "a", "top_k": 5}).json()
    assert [t["id"] for t in after["next"]] == [t["id"] for t in whole["next"]]
