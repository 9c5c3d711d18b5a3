"""The compact inspection options (`units`, `gates`, `precision`): the same values as the full answer, selected
and rounded, and a much smaller answer."""

from __future__ import annotations

import numpy as np

from tests.service.conftest import AppClient

GATES = ("f", "i", "c_tilde", "o", "c", "h")
TEXT = "ROMEO:\nBut soft"


def _matrix(body: dict, layer: int, gate: str) -> np.ndarray:
    """(T, units) of one gate of one layer over the steps."""
    return np.array([step["layers"][layer][gate] for step in body["steps"]], dtype=np.float64)


async def test_top_units_match_the_full_answer(client: AppClient) -> None:
    full = await client.post("/v1/inspect", json={"text": TEXT})
    r = await client.post("/v1/inspect", json={"text": TEXT, "units": 5, "gates": ["f", "i", "o", "c"]})
    assert r.status_code == 200
    body, whole = r.json(), full.json()
    assert "units" not in whole and len(body["units"]) == 2
    for layer in range(2):
        units = body["units"][layer]
        c = _matrix(whole, layer, "c")
        # The N units whose tanh(C) varies most over the input (then largest mean |C|), most active first.
        order = np.lexsort((-np.abs(c).mean(axis=0), -np.tanh(c).std(axis=0)))
        assert units == order[:5].tolist()
        for gate in ("f", "i", "o", "c"):
            np.testing.assert_array_equal(_matrix(body, layer, gate), _matrix(whole, layer, gate)[:, units])
        for step, full_step in zip(body["steps"], whole["steps"], strict=True):
            assert "c_tilde" not in step["layers"][layer] and "h" not in step["layers"][layer]
            assert step["layers"][layer]["mean"] == full_step["layers"][layer]["mean"]  # means cover every unit
    assert [s["char"] for s in body["steps"]] == list(TEXT)
    assert body["next"] == whole["next"] and body["position"] == whole["position"] == len(TEXT)
    assert len(r.content) * 2 < len(full.content)  # hidden 16 here; 67x smaller for the bundled model (README)


async def test_chosen_units_and_precision(client: AppClient) -> None:
    whole = (await client.post("/v1/inspect", json={"text": TEXT})).json()
    body = (await client.post("/v1/inspect", json={"text": TEXT, "units": [7, 0, 15], "precision": 3})).json()
    assert body["units"] == [[7, 0, 15], [7, 0, 15]]
    for layer in range(2):
        for gate in GATES:
            got, want = _matrix(body, layer, gate), _matrix(whole, layer, gate)[:, [7, 0, 15]]
            np.testing.assert_allclose(got, want, atol=0.0005 + 1e-9)
            np.testing.assert_array_equal(got, np.round(got, 3))


async def test_session_inspection_compact_advances_like_the_full_one(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/inspect", json={"text": TEXT, "units": 3, "precision": 4})
    assert r.status_code == 200 and r.json()["position"] == len(TEXT)
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == len(TEXT)


async def test_bad_compact_options_change_nothing(client: AppClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["session_id"]
    for extra in ({"units": [16]}, {"units": 0}, {"units": []}, {"gates": ["x"]}, {"gates": []}, {"precision": 0}):
        r = await client.post(f"/v1/sessions/{sid}/inspect", json={"text": "ab", **extra})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", extra
    assert (await client.get(f"/v1/sessions/{sid}")).json()["position"] == 0
