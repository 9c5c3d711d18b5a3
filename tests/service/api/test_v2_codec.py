"""The V2 codec against the real tritonclient: requests it builds parse, responses we build decode in it."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.api.v2_codec import (
    V2ProtocolError,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    select_outputs,
)

NP_TYPES = {
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}


def client_request(
    tensors: list[tuple[str, str, np.ndarray, bool]],
    outputs: list[tuple[str, bool]] | None = None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    """A request body exactly as tritonclient's HTTP client would send it."""
    inputs = []
    for name, datatype, array, binary in tensors:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    requested = [triton.InferRequestedOutput(n, binary_data=b) for n, b in outputs] if outputs is not None else None
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=requested, **kwargs)
    return body, json_size


def decode(body: bytes, header_length: int | None) -> triton.InferResult:
    return triton.InferenceServerClient.parse_response_body(body, header_length=header_length)


def json_request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def binary_request(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    if expected.dtype == np.object_:
        assert got.dtype == np.object_
        assert got.ravel().tolist() == [v if isinstance(v, bytes) else str(v).encode() for v in expected.ravel()]
    else:
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)  # NaN == NaN here


# --- requests from tritonclient -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_parses_a_tritonclient_request(binary: bool) -> None:
    tokens = np.array([[5, 9, 1, 0]], dtype=np.int64)
    temps = np.array([0.5, np.nan, -np.inf], dtype=np.float32)
    texts = np.array([b"To be", b"", b"or not"], dtype=object)
    body, header_length = client_request(
        [
            ("tokens", "INT64", tokens, binary),
            ("temps", "FP32", temps, binary),
            ("text", "BYTES", texts, binary),
            ("k", "INT32", np.array([3], dtype=np.int32), not binary),
        ],
        outputs=[("logits", True), ("next", False)],
        request_id="req-7",
        sequence_id=42,
        sequence_start=True,
        sequence_end=False,
        priority=2,
        timeout=1000,
        parameters={"custom": "x"},
    )
    request = parse_infer_request(body, header_length)
    assert request.id == "req-7"
    assert request.parameters == {
        "sequence_id": 42,
        "sequence_start": True,
        "sequence_end": False,
        "priority": 2,
        "timeout": 1000,
        "custom": "x",
    }
    assert [i.name for i in request.inputs] == ["tokens", "temps", "text", "k"]
    assert_same(request.inputs[0].data, tokens)
    assert_same(request.inputs[1].data, temps)
    assert_same(request.inputs[2].data, texts)
    assert_same(request.inputs[3].data, np.array([3], dtype=np.int32))
    assert request.inputs[0].shape == (1, 4) and request.inputs[0].datatype == "INT64"
    assert request.outputs is not None
    assert [(o.name, o.binary_data) for o in request.outputs] == [("logits", True), ("next", False)]
    assert request.binary_data_output is False
    assert request.input("temps") is request.inputs[1] and request.input("nope") is None


def test_request_without_outputs_asks_for_binary_outputs() -> None:
    body, header_length = client_request([("x", "INT64", np.arange(3), False)])
    assert header_length is None  # all JSON: tritonclient sends no header length
    request = parse_infer_request(body, header_length)
    assert request.outputs is None and request.binary_data_output is True
    assert select_outputs(request, ["a", "b"]) == (["a", "b"], {"a", "b"})


def test_select_outputs_follows_the_request() -> None:
    request = parse_infer_request(
        *client_request([("x", "INT64", np.arange(3), False)], outputs=[("b", True), ("a", False)])
    )
    assert select_outputs(request, ["a", "b", "c"]) == (["b", "a"], {"b"})
    with pytest.raises(V2ProtocolError, match="unknown output 'zz'"):
        select_outputs(
            parse_infer_request(*client_request([("x", "INT64", np.arange(3), False)], outputs=[("zz", True)])), ["a"]
        )
    # An output that does not say binary_data follows the request-wide binary_data_output.
    x = {"name": "x", "shape": [0], "datatype": "INT64", "data": []}
    unsaid = parse_infer_request(
        json_request(
            [x],
            outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
            parameters={"binary_data_output": True},
        ),
        None,
    )
    assert select_outputs(unsaid, ["a", "b"]) == (["a", "b"], {"a"})


def test_nested_json_data_is_flattened_row_major() -> None:
    body = json_request([{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 3], [4, 5, 6]]}])
    np.testing.assert_array_equal(parse_infer_request(body, None).inputs[0].data, [[1, 2, 3], [4, 5, 6]])


def test_empty_tensors_round_trip() -> None:
    body, header_length = client_request(
        [("x", "FP32", np.zeros((0, 3), np.float32), True), ("s", "BYTES", np.zeros((2, 0), object), True)]
    )
    request = parse_infer_request(body, header_length)
    assert request.inputs[0].data.shape == (0, 3) and request.inputs[1].data.shape == (2, 0)


# --- hypothesis round trips -----------------------------------------------------------------------------------

DATATYPES = ["INT64", "INT32", "FP32", "FP64", "UINT8", "BOOL", "BYTES"]


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        texts = draw(st.lists(st.text(max_size=6), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(texts), dtype=object)
        array[:] = [t.encode() for t in texts]
        return datatype, array.reshape(shape)
    dtype = np.dtype(NP_TYPES[datatype])
    return datatype, draw(hnp.arrays(dtype, shape))  # floats include NaN and infinities


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(tensors(), st.booleans()), min_size=1, max_size=4))
def test_any_tritonclient_request_parses_back(cases: list[tuple[tuple[str, np.ndarray], bool]]) -> None:
    spec = [(f"in{i}", datatype, array, binary) for i, ((datatype, array), binary) in enumerate(cases)]
    request = parse_infer_request(*client_request(spec))
    for parsed, (name, datatype, array, _) in zip(request.inputs, spec, strict=True):
        assert (parsed.name, parsed.datatype) == (name, datatype)
        assert_same(parsed.data, array)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(tensors(), st.booleans()), min_size=1, max_size=4), st.booleans())
def test_any_response_decodes_in_tritonclient(cases: list[tuple[tuple[str, np.ndarray], bool]], with_id: bool) -> None:
    outputs = [(f"out{i}", datatype, array) for i, ((datatype, array), _) in enumerate(cases)]
    binary = {f"out{i}" for i, (_, b) in enumerate(cases) if b}
    body, header_length = encode_infer_response("lstm", "3", "rid" if with_id else None, outputs, binary)
    assert (header_length is None) == (not binary)
    result = decode(body, header_length)
    response = result.get_response()
    assert response["model_name"] == "lstm" and response["model_version"] == "3"
    assert response.get("id") == ("rid" if with_id else None)
    for name, datatype, array in outputs:
        got = result.as_numpy(name)
        assert result.get_output(name)["datatype"] == datatype
        if datatype == "BYTES" and name not in binary:
            assert got.shape == array.shape
            assert got.ravel().tolist() == [v.decode() for v in array.ravel()]  # JSON BYTES come back as str
        else:
            assert_same(got, array)


def test_response_with_parameters_and_casts() -> None:
    logits = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, 2]], dtype=np.int32)  # widened to INT64 safely
    body, header_length = encode_infer_response(
        "m",
        "1",
        "x",
        [("logits", "FP32", logits), ("ids", "INT64", ids), ("s", "BYTES", np.array(["hé"]))],
        {"logits"},
        parameters={"sequence_id": 4},
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["parameters"] == {"sequence_id": 4}
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert body[header_length:] == logits.astype("<f4").tobytes()
    result = decode(body, header_length)
    assert_same(result.as_numpy("logits"), logits)
    assert_same(result.as_numpy("ids"), ids.astype(np.int64))
    assert result.as_numpy("s").tolist() == ["hé"]


def test_json_only_response_is_plain_json() -> None:
    body, header_length = encode_infer_response("m", "1", None, [("ids", "INT64", np.array([7]))], set())
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [7]}],
    }


@pytest.mark.parametrize(
    ("outputs", "binary", "needle"),
    [
        ([("a", "INT32", np.array([1], np.int64))], set(), "cannot send"),
        ([("a", "INT64", np.array([1.5]))], {"a"}, "cannot send"),
        ([("a", "INT64", np.array([1])), ("a", "INT64", np.array([1]))], set(), "duplicate"),
        ([("a", "INT64", np.array([1]))], {"b"}, "not among"),
        ([("a", "COMPLEX", np.array([1]))], set(), "unknown datatype"),
        ([("a", "BYTES", np.array([b"\xff"], dtype=object))], set(), "not UTF-8"),
        ([("a", "BYTES", np.array([3], dtype=object))], {"a"}, "bytes or str"),
    ],
)
def test_encode_rejects_what_it_cannot_send(
    outputs: list[tuple[str, str, np.ndarray]], binary: set[str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        encode_infer_response("m", "1", None, outputs, binary)


# --- malformed requests ---------------------------------------------------------------------------------------


def tokens_request() -> tuple[bytes, int]:
    body, header_length = client_request(
        [
            ("tokens", "INT64", np.arange(4, dtype=np.int64), True),
            ("text", "BYTES", np.array([b"ab", b"c"], dtype=object), True),
        ]
    )
    assert header_length is not None
    return body, header_length


def test_truncated_binary_payload() -> None:
    body, header_length = tokens_request()
    with pytest.raises(V2ProtocolError, match="past the end"):
        parse_infer_request(body[:-1], header_length)


def test_extra_binary_payload() -> None:
    body, header_length = tokens_request()
    with pytest.raises(V2ProtocolError, match="add up"):
        parse_infer_request(body + b"\0", header_length)


def test_header_length_beyond_body() -> None:
    body, _ = tokens_request()
    with pytest.raises(V2ProtocolError, match="only"):
        parse_infer_request(body, len(body) + 1)
    with pytest.raises(V2ProtocolError, match="only"):
        parse_infer_request(body, -1)


def test_wrong_header_length_is_bad_json() -> None:
    body, header_length = tokens_request()
    with pytest.raises(V2ProtocolError, match="not valid JSON"):
        parse_infer_request(body, header_length - 1)


def int64_input(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "x", "shape": shape or [2], "datatype": "INT64", "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("header", "blobs", "needle"),
    [
        # sizes consistent with the body but not with the shape
        ({"inputs": [int64_input(8)]}, [b"\0" * 8], "need 16 bytes"),
        ({"inputs": [int64_input(24)]}, [b"\0" * 24], "need 16 bytes"),
        ({"inputs": [int64_input(16, [3])]}, [b"\0" * 16], "need 24 bytes"),
        ({"inputs": [int64_input(-1)]}, [], "non-negative integer"),
        ({"inputs": [int64_input(True)]}, [b"\0"], "non-negative integer"),
        ({"inputs": [int64_input("16")]}, [b"\0" * 16], "non-negative integer"),  # type: ignore[arg-type]
        ({"inputs": [{**int64_input(16), "data": [1, 2]}]}, [b"\0" * 16], "both"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}]},
            [b"\x02"],
            "0 or 1",
        ),
        # BYTES: a length prefix claims too much, elements missing, bytes left over
        (
            {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
            [struct.pack("<I", 5) + b"ab"],
            "claims 5 bytes",
        ),
        (
            {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]},
            [struct.pack("<I", 5) + b"abcde"],
            "at least 8|before element 1",
        ),
        (
            {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}]},
            [struct.pack("<I", 5) + b"abcde" + b"zz"],
            "before element 1",
        ),
        (
            {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}]},
            [struct.pack("<I", 1) + b"abc"],
            "take 5 bytes",
        ),
        (
            {"inputs": [{"name": "s", "shape": [10**12], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]},
            [b"\0" * 4],
            "at least",
        ),
        ({"inputs": [int64_input(16), int64_input(16)]}, [b"\0" * 32], "more than once"),
    ],
)
def test_malformed_binary_inputs(header: dict[str, Any], blobs: list[bytes], needle: str) -> None:
    with pytest.raises(V2ProtocolError, match=needle):
        parse_infer_request(*binary_request(header, *blobs))


def test_binary_size_without_header_length() -> None:
    body, header_length = tokens_request()
    with pytest.raises(V2ProtocolError, match="no Inference-Header-Content-Length"):
        parse_infer_request(body[:header_length], None)


def tensor(datatype: str, shape: Any, data: Any, name: str = "x") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[]", "must be an object"),
        (b"[" * 100_000, "JSON"),
        (b"{}", "non-empty list"),
        (json_request([]), "non-empty list"),
        (json.dumps({"inputs": {}}).encode(), "non-empty list"),
        (json_request(["x"]), "must be an object"),  # type: ignore[list-item]
        (json_request([{"shape": [1], "datatype": "INT64", "data": [1]}]), "name"),
        (json_request([tensor("INT128", [1], [1])]), "unsupported datatype 'INT128'"),
        (json_request([tensor("int64", [1], [1])]), "unsupported datatype"),
        (json_request([tensor("INT64", [-1], [])]), "non-negative integers"),
        (json_request([tensor("INT64", [1.0], [1])]), "non-negative integers"),
        (json_request([tensor("INT64", [True], [1])]), "non-negative integers"),
        (json_request([tensor("INT64", "2", [1, 2])]), "non-negative integers"),
        (json_request([tensor("INT64", [3], [1, 2])]), "2 elements but the shape needs 3"),
        (json_request([tensor("INT64", [2, 2], [[1, 2], [3]])]), "3 elements"),
        (json_request([tensor("INT64", [1], 5)]), "must be a list"),
        (json_request([{"name": "x", "shape": [1], "datatype": "INT64"}]), "neither"),
        (json_request([tensor("INT64", [1], [1.5])]), "integers"),
        (json_request([tensor("INT64", [1], [1.0])]), "integers"),
        (json_request([tensor("INT64", [1], [True])]), "integers"),
        (json_request([tensor("INT64", [1], ["1"])]), "integers"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [NaN]}]}', "integers"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [Infinity]}]}', "integers"),
        (json_request([tensor("INT32", [1], [2**31])]), "range"),
        (json_request([tensor("UINT8", [1], [-1])]), "range"),
        (json_request([tensor("INT64", [1], [2**63])]), "range"),
        (json_request([tensor("FP32", [1], [1e39])]), "overflows"),
        (json_request([tensor("FP64", [1], [10**400])]), "overflows"),
        (json_request([tensor("FP32", [1], ["1.0"])]), "numbers"),
        (json_request([tensor("FP32", [1], [None])]), "numbers"),
        (json_request([tensor("FP32", [1], [False])]), "numbers"),
        (json_request([tensor("BYTES", [1], [1])]), "strings"),
        (json_request([tensor("BOOL", [1], [1])]), "true or false"),
        (json_request([tensor("INT64", [1], [1]), tensor("INT64", [1], [2])]), "more than once"),
        (json_request([{**tensor("INT64", [1], [1]), "parameters": {"shared_memory_region": "r"}}]), "shared memory"),
        (json_request([{**tensor("INT64", [1], [1]), "parameters": []}]), "parameters"),
        (json_request([{**tensor("INT64", [1], [1]), "extra": 1}]), "unknown field"),
        (json_request([tensor("INT64", [1], [1])], id=5), "'id' must be a string"),
        (json_request([tensor("INT64", [1], [1])], parameters=[1]), "parameters"),
        (json_request([tensor("INT64", [1], [1])], parameters={"binary_data_output": 1}), "binary_data_output"),
        (json_request([tensor("INT64", [1], [1])], outputs={}), "'outputs' must be a list"),
        (json_request([tensor("INT64", [1], [1])], outputs=["y"]), "outputs\\[0\\] must be an object"),
        (json_request([tensor("INT64", [1], [1])], outputs=[{"name": ""}]), "non-empty string"),
        (json_request([tensor("INT64", [1], [1])], outputs=[{"name": "y"}, {"name": "y"}]), "more than once"),
        (
            json_request([tensor("INT64", [1], [1])], outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
            "boolean",
        ),
        (
            json_request([tensor("INT64", [1], [1])], outputs=[{"name": "y", "parameters": {"classification": 3}}]),
            "classification",
        ),
        (json_request([tensor("INT64", [1], [1])], extra=1), "unknown field"),
    ],
)
def test_malformed_json_requests(body: bytes, needle: str) -> None:
    with pytest.raises(V2ProtocolError, match=needle):
        parse_infer_request(body, None)


def test_non_finite_floats_are_accepted_only_in_float_types() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [NaN, Infinity, -Infinity]}]}'
    data = parse_infer_request(body, None).inputs[0].data
    assert np.isnan(data[0]) and data[1] == np.inf and data[2] == -np.inf


def test_protocol_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_infer_request(b"{}", None)
    assert isinstance(info.value, V2ProtocolError) and "inputs" in info.value.message


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("0", 0), (" 120 ", 120)])
def test_parse_header_length(value: str | None, expected: int | None) -> None:
    assert parse_header_length(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "-1", "+5", "1.5"])
def test_parse_header_length_rejects(value: str) -> None:
    with pytest.raises(V2ProtocolError, match="non-negative integer"):
        parse_header_length(value)
