"""Bad input against the in-process app, each case asserting the status, the error code, and that the session the
request aimed at did not change: same position and byte-identical exported state before and after.

Complements test_errors.py (stateless /v1/predict), test_sessions.py (fabricated state mismatches), test_v2.py and
test_v2_codec.py: here the requests aim at live sessions and V2 sequences, whose state must survive them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.service.conftest import AppClient, AppFactory

MODEL = "tiny-test-lstm"
INFER = f"/v2/models/{MODEL}/infer"
PROMPT = "ROMEO:\n"
JSON_HEADERS = {"content-type": "application/json"}

Snapshot = tuple[int, str, str]


# ---- helpers -------------------------------------------------------------------------------------------------
async def new_session(client: AppClient, text: str = PROMPT) -> str:
    r = await client.post("/v1/sessions", json={"text": text})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


async def snapshot(client: AppClient, sid: str) -> Snapshot:
    """What must not change: the position and the exported h and C (base64 of the exact float32 bytes)."""
    info = await client.get(f"/v1/sessions/{sid}")
    state = await client.get(f"/v1/sessions/{sid}/state")
    assert info.status_code == state.status_code == 200, (info.text, state.text)
    return int(info.json()["position"]), str(state.json()["h"]), str(state.json()["c"])


async def active(client: AppClient) -> int:
    return int((await client.engine.session_stats()).active)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text
    return dict(body["error"])


def raw(body: str) -> bytes:
    """A body sent as written: NaN, Infinity and 1e999 are not JSON, but Python's parser reads them."""
    return body.encode()


@pytest.fixture
async def sid(client: AppClient) -> str:
    return await new_session(client)


async def refused_unchanged(
    client: AppClient, sid: str, method: str, path: str, content: bytes, status: int, code: str
) -> dict[str, Any]:
    """Send the request; it must fail with (status, code), and neither the session nor the session count moved."""
    before, count = await snapshot(client, sid), await active(client)
    r = await client.request(method, path, content=content, headers=JSON_HEADERS)
    err = assert_error(r, status, code)
    assert await snapshot(client, sid) == before, f"{path} {content!r} changed the session"
    assert await active(client) == count, f"{path} {content!r} left a session behind"
    return err


# ---- bodies that are not UTF-8 -------------------------------------------------------------------------------
# (body, status): a body that does not decode is 400; Python's JSON reader decodes surrogates encoded as UTF-8
# (CESU-8) with surrogatepass, and the lone surrogate it yields is then an invalid string field, 422.
NOT_UTF8: list[tuple[bytes, int]] = [
    (b'{"text": "\xff\xfe"}', 400),  # bytes that never occur in UTF-8
    (b'{"text": "ab\xc3"}', 400),  # a multi-byte sequence cut short
    (b'{"text": "\xc0\xaf"}', 400),  # an overlong encoding of "/"
    (b'{"te\xffxt": "a"}', 400),  # in a key
    (b'\xff{"text": "a"}', 400),  # before the JSON
    (b'{"text": "a", "top_k": 3}\x80', 400),  # valid JSON followed by a stray continuation byte
    (b'{"text": "\xed\xa0\x80"}', 422),  # a UTF-16 surrogate encoded as UTF-8
]


@pytest.mark.parametrize("route", ["predict", "generate", "inspect", "fork", "completions"])
async def test_bodies_that_are_not_utf8_are_refused(client: AppClient, sid: str, route: str) -> None:
    path = "/v1/completions" if route == "completions" else f"/v1/sessions/{sid}/{route}"
    for body, status in NOT_UTF8:
        code = "invalid_request"
        if route == "completions":
            body = body.replace(b'{"te', f'{{"model": "{MODEL}", "session_id": "{sid}", "te'.encode())
            body = body.replace(b'"text"', b'"prompt"')
            # `prompt` (str | list[str] | list[int]) lets the lone surrogate through: the tokenizer then names it.
            code = "invalid_token" if status == 422 else code
        await refused_unchanged(client, sid, "POST", path, body, status, code)


# ---- non-finite floats in sampling parameters ----------------------------------------------------------------
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_sampling_parameters_are_refused(client: AppClient, sid: str, field: str, value: str) -> None:
    generate = f"/v1/sessions/{sid}/generate"
    for stream in ("false", "true"):  # a stream's errors come before it starts, with their status
        body = raw(f'{{"text": "ab", "max_tokens": 3, "{field}": {value}, "stream": {stream}}}')
        err = await refused_unchanged(client, sid, "POST", generate, body, 422, "invalid_request")
        assert field in err["message"], err
    completion = raw(
        f'{{"model": "{MODEL}", "prompt": "ab", "session_id": "{sid}", "max_tokens": 3, "{field}": {value}}}'
    )
    await refused_unchanged(client, sid, "POST", "/v1/completions", completion, 422, "invalid_request")


async def test_a_huge_finite_temperature_samples_valid_tokens(client: AppClient, sid: str) -> None:
    """1e308 is finite and >= 0, so it is accepted: the distribution is then uniform, never NaN."""
    position, _, _ = await snapshot(client, sid)
    r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 5, "temperature": 1e308, "seed": 3})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert len(tokens) == 5 and all(0 <= t < 76 for t in tokens)
    assert (await snapshot(client, sid))[0] == position + 5


# ---- huge and negative numbers -------------------------------------------------------------------------------
HUGE_AND_NEGATIVE: list[tuple[str, dict[str, Any], int, str]] = [
    ("predict", {"text": "a", "top_k": 10**30}, 422, "invalid_request"),
    ("predict", {"text": "a", "top_k": -1}, 422, "invalid_request"),
    ("predict", {"text": "a", "expected_position": 10**30}, 409, "position_conflict"),
    ("predict", {"text": "a", "expected_position": -1}, 422, "invalid_request"),
    ("predict", {"tokens": [10**30]}, 422, "invalid_token"),
    ("predict", {"tokens": [-1]}, 422, "invalid_token"),
    ("generate", {"max_tokens": 10**20}, 422, "invalid_request"),
    ("generate", {"max_tokens": -5}, 422, "invalid_request"),
    ("generate", {"max_tokens": 0}, 422, "invalid_request"),
    ("generate", {"top_k": 10**30}, 422, "invalid_request"),
    ("generate", {"top_k": -1}, 422, "invalid_request"),
    ("generate", {"seed": 10**30}, 422, "invalid_request"),
    ("generate", {"seed": -1}, 422, "invalid_request"),
    ("generate", {"temperature": -1e308}, 422, "invalid_request"),
    ("generate", {"top_p": 1e308}, 422, "invalid_request"),
    ("generate", {"top_p": -0.5}, 422, "invalid_request"),
    ("generate", {"expected_position": 10**30, "max_tokens": 2}, 409, "position_conflict"),
    ("inspect", {"text": "a", "top_k": 10**30}, 422, "invalid_request"),
    ("fork", {"ttl_seconds": 1e308}, 422, "invalid_request"),
    ("fork", {"ttl_seconds": -1}, 422, "invalid_request"),
    ("fork", {"ttl_seconds": 0}, 422, "invalid_request"),
    ("completions", {"max_tokens": 10**20}, 422, "invalid_request"),
    ("completions", {"max_tokens": -1}, 422, "invalid_request"),
    ("completions", {"seed": 10**30}, 422, "invalid_request"),
    ("completions", {"top_k": 10**30}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("route", "fields", "status", "code"), HUGE_AND_NEGATIVE)
async def test_huge_and_negative_numbers_are_refused(
    client: AppClient, sid: str, route: str, fields: dict[str, Any], status: int, code: str
) -> None:
    if route == "completions":
        path, fields = "/v1/completions", {"model": MODEL, "prompt": "a", "session_id": sid, **fields}
    else:
        path = f"/v1/sessions/{sid}/{route}"
    await refused_unchanged(client, sid, "POST", path, json.dumps(fields).encode(), status, code)


@pytest.mark.parametrize("ttl", ["1e308", "1e999", "-1", "0", "NaN"])
async def test_huge_and_negative_ttls_create_nothing(client: AppClient, sid: str, ttl: str) -> None:
    await refused_unchanged(
        client, sid, "POST", "/v1/sessions", raw(f'{{"ttl_seconds": {ttl}}}'), 422, "invalid_request"
    )


async def test_an_integer_too_long_to_parse_is_refused(client: AppClient, sid: str) -> None:
    """Python refuses to read integers of more than 4300 digits: that is a malformed body, not a crash."""
    body = raw('{"text": "a", "top_k": ' + "9" * 5000 + "}")
    await refused_unchanged(client, sid, "POST", f"/v1/sessions/{sid}/predict", body, 400, "invalid_request")


# ---- imported states -----------------------------------------------------------------------------------------
def floats_b64(values: np.ndarray) -> str:
    return base64.b64encode(values.astype("<f4").tobytes()).decode()


@pytest.mark.parametrize(("field", "value"), [("h", np.nan), ("c", np.nan), ("h", np.inf), ("c", -np.inf)])
async def test_states_with_non_finite_values_are_refused(client: AppClient, sid: str, field: str, value: float) -> None:
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    values = np.frombuffer(base64.b64decode(state[field]), "<f4").copy()
    values[3] = value
    body = json.dumps({"state": {**state, field: floats_b64(values)}, "text": "ab"}).encode()
    err = await refused_unchanged(client, sid, "POST", "/v1/sessions", body, 422, "invalid_state")
    assert f"state.{field}" in err["message"], err


async def test_states_with_extreme_finite_values_stay_finite(client: AppClient) -> None:
    """No LSTM reaches |h| = 3e38 (h = o * tanh(C)), but such a state is finite, so it is accepted: then nothing
    after it may turn NaN, not the probabilities, nor the generated tokens, nor the state exported later."""
    sid = await new_session(client)
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    extreme = floats_b64(np.resize(np.array([3.4e38, -3.4e38, 1e30], dtype=np.float32), 32))
    r = await client.post(
        "/v1/sessions", json={"state": {**state, "h": extreme, "c": extreme}, "text": "ab", "top_k": 76}
    )
    assert r.status_code == 201, r.text
    restored = r.json()["session_id"]
    probs = [t["prob"] for t in r.json()["next"]]
    assert all(0 <= p <= 1 for p in probs) and abs(sum(probs) - 1) < 1e-3
    r = await client.post(f"/v1/sessions/{restored}/generate", json={"max_tokens": 3, "seed": 1})
    assert r.status_code == 200 and all(0 <= t < 76 for t in r.json()["tokens"]), r.text
    again = (await client.get(f"/v1/sessions/{restored}/state")).json()
    for field in ("h", "c"):
        assert np.isfinite(np.frombuffer(base64.b64decode(again[field]), "<f4")).all()
    assert (await client.post("/v1/sessions", json={"state": again})).status_code == 201  # and it re-imports


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"position": 10**30}, "invalid_state"),
        ({"position": 2**63}, "invalid_state"),
        ({"position": 2**50 + 1}, "invalid_state"),
        ({"shape": [-2, 16]}, "state_mismatch"),
        ({"shape": [2**70, 2**70]}, "state_mismatch"),
        ({"shape": [16, 2]}, "state_mismatch"),  # the same number of floats, the wrong layout
        ({"h": ""}, "invalid_state"),
        ({"h": "=" * 8}, "invalid_state"),
        ({"c": "é" * 8}, "invalid_state"),
    ],
)
async def test_states_with_impossible_fields_are_refused(
    client: AppClient, sid: str, fields: dict[str, Any], code: str
) -> None:
    state = (await client.get(f"/v1/sessions/{sid}/state")).json()
    body = json.dumps({"state": {**state, **fields}}).encode()
    await refused_unchanged(client, sid, "POST", "/v1/sessions", body, 422, code)


async def test_a_state_of_another_model_is_refused(app_factory: AppFactory, tiny_peephole_model_path: Path) -> None:
    """A real export of another model: same name, shape and dtype, valid floats, but other weights."""
    async with app_factory(model_path=tiny_peephole_model_path) as other:
        foreign = (await other.get(f"/v1/sessions/{await new_session(other)}/state")).json()
    async with app_factory() as client:
        sid = await new_session(client)
        own = (await client.get(f"/v1/sessions/{sid}/state")).json()
        assert (foreign["shape"], foreign["dtype"]) == (own["shape"], own["dtype"])
        assert foreign["model_fingerprint"] != own["model_fingerprint"]
        body = json.dumps({"state": foreign, "text": "ab"}).encode()
        err = await refused_unchanged(client, sid, "POST", "/v1/sessions", body, 422, "state_mismatch")
        assert foreign["model_fingerprint"] in err["message"]


# ---- V2: wrong shapes, dtypes and truncated binary payloads on a live sequence ----------------------------------
def v2_json(ids: list[int], **parameters: Any) -> bytes:
    tensor = {"name": "input_ids", "datatype": "INT64", "shape": [1, len(ids)], "data": ids}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


async def v2_logits(client: AppClient, ids: list[int], **parameters: Any) -> np.ndarray:
    r = await client.post(INFER, content=v2_json(ids, **parameters), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], dtype=np.float32)


async def v2_refused(
    client: AppClient, content: bytes, headers: dict[str, Any] | None = None, fragment: str = ""
) -> None:
    r = await client.post(INFER, content=content, headers=headers or JSON_HEADERS)
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and fragment in body["error"], body


class LiveSequence:
    """A V2 sequence fed `first`, and the check that it is still exactly there: continued with [1], it must give
    the logits of the uninterrupted text, computed statelessly (the session behind it is not reachable by id)."""

    def __init__(self, client: AppClient, sequence_id: int | str, first: tuple[int, ...] = (5, 9, 33)) -> None:
        self.client = client
        self.id = sequence_id
        self.first = list(first)

    async def start(self) -> None:
        await v2_logits(self.client, self.first, sequence_id=self.id, sequence_start=True)

    async def assert_unchanged(self) -> None:
        expected = await v2_logits(self.client, [*self.first, 1])
        got = await v2_logits(self.client, [1], sequence_id=self.id)
        self.first.append(1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def binary_request(rows: np.ndarray, **parameters: Any) -> tuple[bytes, int]:
    """A request exactly as tritonclient sends it, tensors in the binary extension."""
    tensor = triton.InferInput("input_ids", list(rows.shape), "INT64")
    tensor.set_data_from_numpy(rows, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], **parameters)
    assert json_size is not None
    return body, json_size


def with_header(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def binary_tensor(shape: list[int], datatype: str, size: Any) -> dict[str, Any]:
    return {"name": "input_ids", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


@pytest.fixture
async def sequence(client: AppClient) -> AsyncIterator[LiveSequence]:
    seq = LiveSequence(client, 77)
    await seq.start()
    yield seq
    await seq.assert_unchanged()  # every test below sends only refused requests to it
    assert await active(client) == 1


SEQ = {"sequence_id": 77}
WRONG_SHAPES_AND_DTYPES: list[tuple[dict[str, Any], str]] = [
    ({"datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}, "must be INT64"),
    ({"datatype": "FP64", "shape": [1, 1], "data": [float("inf")]}, "must be INT64"),
    ({"datatype": "BOOL", "shape": [1, 2], "data": [True, False]}, "must be INT64"),
    ({"datatype": "BYTES", "shape": [1, 1], "data": ["ab"]}, "must be INT64"),
    ({"datatype": "UINT64", "shape": [1, 1], "data": [2**64 - 1]}, "must be INT64"),
    ({"datatype": "INT64", "shape": [1, 1, 2], "data": [1, 2]}, "shape [rows, tokens]"),
    ({"datatype": "INT64", "shape": [2], "data": [1, 2]}, "shape [rows, tokens]"),
    ({"datatype": "INT64", "shape": [], "data": [1]}, "shape [rows, tokens]"),
    ({"datatype": "INT64", "shape": [0, 5], "data": []}, "shape [rows, tokens]"),
    ({"datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}, "one row"),
    ({"datatype": "INT64", "shape": [1, 3], "data": [1, 2]}, "the shape needs 3"),
    ({"datatype": "INT64", "shape": [1, -1], "data": [1]}, "non-negative integers"),
    ({"datatype": "INT64", "shape": [1, 2**70], "data": [1]}, "more elements"),
    ({"datatype": "INT64", "shape": [1, 1], "data": [1.5]}, "integers"),
    ({"datatype": "INT64", "shape": [1, 1], "data": [2**63]}, "range"),
    ({"datatype": "INT64", "shape": [1, 1], "data": [76]}, "outside [0, 76)"),
    ({"datatype": "INT64", "shape": [1, 1], "data": [-1]}, "outside [0, 76)"),
    ({"datatype": "int64", "shape": [1, 1], "data": [1]}, "unsupported datatype"),
]


@pytest.mark.parametrize(("tensor", "fragment"), WRONG_SHAPES_AND_DTYPES)
async def test_v2_wrong_shapes_and_dtypes_leave_the_sequence_unchanged(
    client: AppClient, sequence: LiveSequence, tensor: dict[str, Any], fragment: str
) -> None:
    for flags in ({}, {"sequence_end": True}, {"sequence_start": True}):
        body = json.dumps({"inputs": [{"name": "input_ids", **tensor}], "parameters": {**SEQ, **flags}}).encode()
        await v2_refused(client, body, fragment=fragment)


async def test_v2_truncated_binary_payloads_leave_the_sequence_unchanged(
    client: AppClient, sequence: LiveSequence
) -> None:
    body, json_size = binary_request(np.array([[1, 2, 3]], dtype=np.int64), sequence_id=77)
    headers = {"Inference-Header-Content-Length": str(json_size)}
    for cut in range(1, len(body) - json_size + 1):  # every cut inside the 24 bytes of tensor data
        await v2_refused(client, body[:-cut], headers, "runs past the end")
    await v2_refused(client, body[: json_size - 1], headers, "only")  # the cut reaches into the JSON header
    await v2_refused(client, body + b"\0", headers, "add up")
    await v2_refused(client, body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "only")


@pytest.mark.parametrize(
    ("header", "blob", "fragment"),
    [
        (binary_tensor([1, 2], "INT64", 8), b"\1\0\0\0\0\0\0\0", "need 16 bytes"),  # size right for [1, 1] only
        (binary_tensor([1, 2], "INT64", 24), b"\1" * 24, "need 16 bytes"),
        (binary_tensor([1, 2], "INT32", 8), b"\1\0\0\0\2\0\0\0", "must be INT64"),  # INT32 ids, declared as such
        (binary_tensor([1, 2], "INT64", -8), b"", "non-negative integer"),
        (binary_tensor([1, 2], "INT64", 2**70), b"\0" * 16, "runs past the end"),
        (binary_tensor([1, 2], "INT64", 16.0), b"\0" * 16, "non-negative integer"),
        (binary_tensor([1, 10**12], "INT64", 16), b"\0" * 16, "need 8000000000000 bytes"),
        (binary_tensor([1, 1], "BOOL", 1), b"\2", "0 or 1"),
    ],
)
async def test_v2_wrong_binary_sizes_leave_the_sequence_unchanged(
    client: AppClient, sequence: LiveSequence, header: dict[str, Any], blob: bytes, fragment: str
) -> None:
    body, headers = with_header({"inputs": [header], "parameters": SEQ}, blob)
    await v2_refused(client, body, headers, fragment)


def one_tensor(**fields: Any) -> bytes:
    """A sequence request on the live sequence with one input_ids tensor, some of its fields replaced."""
    tensor = {"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": [1], **fields}
    return json.dumps({"inputs": [tensor], "parameters": SEQ}).encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (one_tensor(datatype=["INT64"]), "unsupported datatype"),  # not even hashable
        (one_tensor(datatype={"INT64": 1}), "unsupported datatype"),
        (one_tensor(datatype="BYTES", data=["\ud800"]), "not valid Unicode"),  # JSON can spell a lone surrogate
        (one_tensor(shape=[1] * 65), "at most 32"),  # more dimensions than NumPy has
        (one_tensor(shape=[0, 2**40, 2**40], data=[]), "more elements"),  # empty, yet too big for NumPy
        (one_tensor(shape=[2**63, 0], data=[]), "more elements"),
        (one_tensor()[:-1] + b', "id": ' + b"7" * 5000 + b"}", "not valid JSON"),  # past Python's 4300 digits
    ],
)
async def test_v2_bodies_that_broke_the_parser(
    client: AppClient, sequence: LiveSequence, body: bytes, fragment: str
) -> None:
    """Each of these raised an exception other than the protocol's, a 500, before the parser refused them."""
    await v2_refused(client, body, fragment=fragment)


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb2", b"-1", b"1e3", b"0x10", b""])
async def test_v2_header_lengths_that_are_not_decimal_digits(
    client: AppClient, sequence: LiveSequence, value: bytes
) -> None:
    """Latin-1 superscript digits pass str.isdigit() but not int(): they must be a 400, not a 500."""
    body, _ = binary_request(np.array([[1, 2]], dtype=np.int64), sequence_id=77)
    await v2_refused(client, body, {"Inference-Header-Content-Length": value}, "non-negative integer")


# ---- V2: duplicate and out-of-order sequence flags -------------------------------------------------------------
async def test_continuing_or_ending_a_sequence_never_started_creates_nothing(client: AppClient) -> None:
    for flags in ({}, {"sequence_end": True}, {"sequence_start": False, "sequence_end": True}):
        await v2_refused(client, v2_json([1, 2], sequence_id=555, **flags), fragment="sequence_start")
        await v2_refused(client, v2_json([1, 2], sequence_id="555", **flags), fragment="sequence_start")
    assert await active(client) == 0


async def test_ending_a_sequence_twice(client: AppClient) -> None:
    seq = LiveSequence(client, "twice")
    await seq.start()
    await v2_logits(client, [4], sequence_id="twice", sequence_end=True)
    assert await active(client) == 0
    await v2_refused(client, v2_json([4], sequence_id="twice", sequence_end=True), fragment="sequence_start")
    await v2_refused(client, v2_json([4], sequence_id="twice"), fragment="sequence_start")
    assert await active(client) == 0


async def test_starting_a_sequence_twice_restarts_it_and_frees_the_first(client: AppClient) -> None:
    first = await v2_logits(client, [5, 9], sequence_id=8, sequence_start=True)
    await v2_logits(client, [60], sequence_id=8)
    again = await v2_logits(client, [5, 9], sequence_id=8, sequence_start=True)
    np.testing.assert_array_equal(first, again)  # from zeros, not a continuation of [5, 9, 60]
    assert await active(client) == 1  # the first start's session was freed, not leaked
    await LiveSequence(client, 8, first=(5, 9)).assert_unchanged()


async def test_refused_start_or_end_leaves_a_running_sequence_as_it_was(
    client: AppClient, sequence: LiveSequence
) -> None:
    """A bad token with sequence_start must not have reset the sequence, nor with sequence_end have ended it."""
    for flags in ({"sequence_start": True}, {"sequence_end": True}, {"sequence_start": True, "sequence_end": True}):
        await v2_refused(client, v2_json([1, 99], **SEQ, **flags), fragment="outside [0, 76)")
        await v2_refused(client, v2_json([1], **SEQ, **flags)[:-3], fragment="not valid JSON")
