"""POST /v1/sessions/{id}/inspect and /v1/inspect: per character and layer, every gate's full vector and mean,
the session advanced as predict would, and the check against the served model."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from tests.service.conftest import AppClient

GATES = ("f", "i", "c_tilde", "o", "c", "h")


async def test_session_inspection(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={"text": "ROMEO"})).json()["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/inspect", json={"text": ":\nBut", "top_k": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["session_id"], body["position"], body["layers"], body["hidden_size"]) == (sid, 10, 2, 16)
    assert [(s["char"], s["position"]) for s in body["steps"]] == [(":", 6), ("\n", 7), ("B", 8), ("u", 9), ("t", 10)]
    for step in body["steps"]:
        assert [layer["layer"] for layer in step["layers"]] == [0, 1]
        for layer in step["layers"]:
            for gate in GATES:
                assert len(layer[gate]) == 16
                assert abs(layer["mean"][gate] - float(np.mean(layer[gate]))) < 1e-6
            f, i, o = (np.array(layer[g]) for g in ("f", "i", "o"))
            assert ((f > 0) & (f < 1) & (i > 0) & (i < 1) & (o > 0) & (o < 1)).all()
            np.testing.assert_allclose(layer["h"], o * np.tanh(layer["c"]), atol=1e-6)
    assert max(body["deviation"].values()) < 1e-4
    # The session advanced like predict; the answer's next tokens are predict's.
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 10
    whole = (await client.post("/v1/predict", json={"text": "ROMEO:\nBut", "top_k": 3})).json()
    assert [t["id"] for t in body["next"]] == [t["id"] for t in whole["next"]]
    # The last step's h and C are the session's state, as exported.
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    h = np.frombuffer(base64.b64decode(state["h"]), dtype="<f4").reshape(2, 16)
    np.testing.assert_allclose([layer["h"] for layer in body["steps"][-1]["layers"]], h, atol=1e-5)


async def test_stateless_inspection_and_errors(app_factory: Any) -> None:
    async with app_factory(max_inspect_length=8) as client:
        body = (await client.post("/v1/inspect", json={"tokens": [1, 2]})).json()
        assert "session_id" not in body and body["position"] == 2 and len(body["steps"]) == 2
        r = await client.post("/v1/inspect", json={"text": "123456789"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "text_too_long"
        r = await client.post("/v1/sessions/nope/inspect", json={"text": "a"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        r = await client.post("/v1/inspect", json={})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
