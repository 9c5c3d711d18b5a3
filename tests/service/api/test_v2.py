"""The Open Inference Protocol routes, with bodies built and read by tritonclient itself (the real client over
TCP runs in tests/e2e): metadata, health, stateless rows, sequences, binary and JSON tensors, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service.engine.sequences import sequence_key
from tests.service.conftest import AppClient

MODEL = "tiny-test-lstm"
INFER = f"/v2/models/{MODEL}/infer"


async def infer(
    client: AppClient,
    rows: np.ndarray,
    *,
    binary: bool = True,
    outputs: list[Any] | None = None,
    path: str = INFER,
    **sequence: Any,
) -> triton.InferResult:
    tensor = triton.InferInput("input_ids", list(rows.shape), "INT64")
    tensor.set_data_from_numpy(rows.astype(np.int64), binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs, **sequence)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    r = await client.post(path, content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = r.headers.get("Inference-Header-Content-Length")
    return triton.InferenceServerClient.parse_response_body(
        r.content, header_length=None if length is None else int(length)
    )


async def engine_logits(client: AppClient, ids: list[int]) -> np.ndarray:
    """The logits the engine gives after `ids` from a zero state, straight from its batcher."""
    return (await client.engine.step(np.array(ids, dtype=np.int64))).logits


async def test_server_and_model_metadata(client: AppClient) -> None:
    server = (await client.get("/v2")).json()
    assert server["name"] == "lstm-serve" and "binary_tensor_data" in server["extensions"]
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    meta = (await client.get(f"/v2/models/{MODEL}")).json()
    assert meta == {
        "name": MODEL,
        "versions": ["0"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 76]}],
    }
    assert (await client.get(f"/v2/models/{MODEL}/versions/0")).json() == meta
    assert (await client.get(f"/v2/models/{MODEL}/ready")).status_code == 200
    assert (await client.get(f"/v2/models/{MODEL}/versions/0/ready")).status_code == 200
    for path in ("/v2/models/other", f"/v2/models/{MODEL}/versions/9", "/v2/models/other/ready"):
        r = await client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str)


@pytest.mark.parametrize("binary", [True, False])
async def test_stateless_rows(client: AppClient, binary: bool) -> None:
    rows = np.array([[5, 9, 1], [7, 7, 7], [60, 2, 3]])
    result = await infer(client, rows, binary=binary, outputs=[triton.InferRequestedOutput("logits", binary)])
    logits = result.as_numpy("logits")
    assert logits.shape == (3, 76) and logits.dtype == np.float32
    for row, got in zip(rows, logits, strict=True):
        np.testing.assert_array_equal(got, await engine_logits(client, row.tolist()))
    # Default outputs (tritonclient asks for binary ones) and the versioned route agree.
    default = await infer(client, rows, path=f"/v2/models/{MODEL}/versions/0/infer")
    np.testing.assert_array_equal(default.as_numpy("logits"), logits)


async def test_a_sequence_is_a_session(client: AppClient) -> None:
    text = [5, 9, 1, 33, 40, 2, 8]
    pieces = [text[:2], text[2:3], text[3:]]
    got = []
    for i, piece in enumerate(pieces):
        result = await infer(
            client, np.array([piece]), sequence_id=42, sequence_start=i == 0, sequence_end=i == len(pieces) - 1
        )
        got.append(result.as_numpy("logits")[0])
    for i in range(len(pieces)):
        upto = sum(len(p) for p in pieces[: i + 1])
        np.testing.assert_allclose(got[i], await engine_logits(client, text[:upto]), atol=1e-5)
    # Ended: the sequence is freed, and continuing it is refused.
    r = await client.post(
        INFER,
        json={
            "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
            "parameters": {"sequence_id": 42},
        },
    )
    assert r.status_code == 400 and "sequence_start" in r.json()["error"]
    assert (await client.engine.session_stats()).active == 0  # sequence_end deleted its session


async def test_sequence_start_resets_and_ids_keep_their_type(client: AppClient) -> None:
    first = (await infer(client, np.array([[3, 4]]), sequence_id="7", sequence_start=True)).as_numpy("logits")
    await infer(client, np.array([[50]]), sequence_id="7")
    again = (await infer(client, np.array([[3, 4]]), sequence_id="7", sequence_start=True)).as_numpy("logits")
    np.testing.assert_array_equal(first, again)  # a fresh state, not a continuation
    # The integer 7 is another sequence than the string "7".
    r = await client.post(
        INFER,
        json={
            "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
            "parameters": {"sequence_id": 7},
        },
    )
    assert r.status_code == 400
    assert sequence_key(MODEL, 7) != sequence_key(MODEL, "7")


async def test_expired_sequence_is_refused(app_factory: Any) -> None:
    async with app_factory(session_ttl_s=0.05) as client:
        await infer(client, np.array([[3]]), sequence_id=9, sequence_start=True)
        await asyncio.sleep(0.1)
        r = await client.post(
            INFER,
            json={
                "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
                "parameters": {"sequence_id": 9},
            },
        )
        assert r.status_code == 400 and "expired" in r.json()["error"]


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2], **overrides}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": [tensor(datatype="INT32")]}, 400, "must be INT64"),
        ({"inputs": [tensor(shape=[2])]}, 400, "shape [rows, tokens]"),
        ({"inputs": [tensor(shape=[1, 0], data=[])]}, 400, "shape [rows, tokens]"),
        ({"inputs": [tensor(name="x")]}, 400, "unknown input 'x'"),
        ({"inputs": [tensor(data=[1, 99])]}, 400, "outside [0, 76)"),
        ({"inputs": [tensor(shape=[2, 1])], "parameters": {"sequence_id": 1, "sequence_start": True}}, 400, "one row"),
        ({"inputs": [tensor()], "parameters": {"sequence_start": True}}, 400, "need a sequence_id"),
        ({"inputs": [tensor()], "parameters": {"sequence_id": -1}}, 400, "unsigned 64-bit"),
        ({"inputs": [tensor()], "parameters": {"sequence_id": 5, "sequence_end": "yes"}}, 400, "booleans"),
        ({"inputs": [tensor()], "outputs": [{"name": "nope"}]}, 400, "unknown output"),
        ({"inputs": []}, 400, "non-empty list"),
    ],
)
async def test_errors_have_the_protocols_shape(
    client: AppClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    r = await client.post(INFER, json=body)
    assert r.status_code == status and fragment in r.json()["error"], r.text


async def test_unknown_model_and_not_json(client: AppClient) -> None:
    r = await client.post("/v2/models/other/infer", json={"inputs": [tensor()]})
    assert r.status_code == 404 and "not served" in r.json()["error"]
    r = await client.post(INFER, content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = await client.post(INFER, content=b"{}", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "compressed" in r.json()["error"]
