"""Property tests of the V2 request parser and the router's checks on what it parsed: any bytes, any JSON header,
truncated payloads, wrong binary_data_size, wrong shapes and datatypes end in V2ProtocolError (HTTP 400) or in a
request whose tensors have exactly their declared shape and datatype, never in another exception (HTTP 500)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.api.v2 import input_rows, sequence_params
from service.api.v2_codec import DTYPES, InferRequest, V2ProtocolError, parse_header_length, parse_infer_request

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIXED = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def parse_or_refuse(body: bytes, header_length: int | None) -> InferRequest | None:
    """The parser's answer: a request, or None for V2ProtocolError; any other exception fails the test."""
    try:
        request = parse_infer_request(body, header_length)
    except V2ProtocolError as exc:
        assert isinstance(exc.message, str) and exc.message
        return None
    for tensor in request.inputs:  # what was accepted is exactly what was declared
        assert tensor.data.shape == tensor.shape and tensor.data.dtype == DTYPES[tensor.datatype]
    try:  # and the router's own checks on it refuse the same way
        rows = input_rows(request)
        assert rows.dtype == np.int64 and rows.ndim == 2 and 0 not in rows.shape
        sequence_params(request.parameters)
    except V2ProtocolError:
        pass
    return request


# ---- arbitrary bytes and arbitrary JSON ------------------------------------------------------------------------
@PROPERTIES
@given(st.binary(max_size=300), st.none() | st.integers(-5, 400))
def test_any_bytes(body: bytes, header_length: int | None) -> None:
    parse_or_refuse(body, header_length)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([*FIXED, "BYTES", "input_ids", "INT128", "fp32"])
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
SHAPES = st.lists(st.integers(0, 4), max_size=3) | st.lists(st.integers(-2, 2**64), max_size=4) | JSON


@st.composite
def tensor_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor that looks like the protocol's, each field sometimes wrong in type or value."""
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input_ids", "x", ""]) | JSON),
        "datatype": draw(st.sampled_from([*FIXED, "BYTES"]) | JSON),
        "shape": draw(SHAPES),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(
            JSON | st.lists(JSON_SCALARS, max_size=8) | st.lists(st.lists(st.integers(-3, 80), max_size=3), max_size=3)
        )
    if draw(st.booleans()):
        parameters = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_size", "shared_memory_region", "other"]),
                st.integers(-2, 64) | JSON,
                max_size=2,
            )
        )
        tensor["parameters"] = parameters
    return tensor


@st.composite
def request_parameters(draw: st.DrawFn) -> dict[str, Any]:
    keys = st.sampled_from(["sequence_id", "sequence_start", "sequence_end", "binary_data_output", "priority"])
    values = (
        st.booleans()
        | st.integers(-1, 2**64 + 1)
        | st.sampled_from([0, "", "7", 0.0, math.nan])
        | st.text(max_size=300)
        | JSON
    )
    return draw(st.dictionaries(keys, values, max_size=4))


@PROPERTIES
@given(
    st.lists(tensor_headers(), max_size=3),
    request_parameters() | JSON,
    st.binary(max_size=64),
    st.booleans(),
    st.booleans(),
)
def test_any_json_header_with_any_payload(
    inputs: list[dict[str, Any]], parameters: Any, payload: bytes, binary: bool, with_outputs: bool
) -> None:
    header: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
    if with_outputs:
        header["outputs"] = [{"name": "logits", "parameters": {"binary_data": binary}}]
    head = json.dumps(header).encode()
    parse_or_refuse(head + payload, len(head) if binary else None)


# ---- mutations of valid tritonclient requests ----------------------------------------------------------------
@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, np.ndarray]]]:
    """A request as tritonclient builds it, every tensor binary, with its (datatype, array) inputs."""
    inputs, tensors = [], []
    for i in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(FIXED))
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
        array = draw(hnp.arrays(DTYPES[datatype].newbyteorder("="), shape))
        tensor = triton.InferInput(f"in{i}", list(shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
        tensors.append((datatype, array))
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    assert json_size is not None
    return body, json_size, tensors


@PROPERTIES
@given(valid_requests(), st.data())
def test_every_truncation_is_refused(request: tuple[bytes, int, list[Any]], data: st.DataObject) -> None:
    body, json_size, _ = request
    assert parse_or_refuse(body, json_size) is not None
    cut = data.draw(st.integers(0, len(body) - 1), label="keep")
    with pytest.raises(V2ProtocolError):
        parse_infer_request(body[:cut], json_size)


def edit_header(body: bytes, json_size: int, edit: Any) -> tuple[bytes, int]:
    """Apply `edit` to the JSON header and rebuild the body with the same binary payload."""
    header = json.loads(body[:json_size])
    edit(header)
    head = json.dumps(header).encode()
    return head + body[json_size:], len(head)


@PROPERTIES
@given(valid_requests(), st.data())
def test_a_wrong_binary_data_size_is_refused(request: tuple[bytes, int, list[Any]], data: st.DataObject) -> None:
    body, json_size, tensors = request
    which = data.draw(st.integers(0, len(tensors) - 1), label="input")
    delta = data.draw(st.integers(-64, 64).filter(bool), label="delta")

    def shift(header: dict[str, Any]) -> None:
        header["inputs"][which]["parameters"]["binary_data_size"] += delta

    with pytest.raises(V2ProtocolError):
        parse_infer_request(*edit_header(body, json_size, shift))


@PROPERTIES
@given(valid_requests(), st.data())
def test_a_shape_of_another_size_is_refused(request: tuple[bytes, int, list[Any]], data: st.DataObject) -> None:
    body, json_size, tensors = request
    which = data.draw(st.integers(0, len(tensors) - 1), label="input")
    shape = data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=4), label="shape")
    assume(math.prod(shape) != tensors[which][1].size)

    def reshape(header: dict[str, Any]) -> None:
        header["inputs"][which]["shape"] = shape

    with pytest.raises(V2ProtocolError):
        parse_infer_request(*edit_header(body, json_size, reshape))


@PROPERTIES
@given(valid_requests(), st.data())
def test_a_datatype_of_another_width_is_refused(request: tuple[bytes, int, list[Any]], data: st.DataObject) -> None:
    body, json_size, tensors = request
    which = data.draw(st.integers(0, len(tensors) - 1), label="input")
    width = DTYPES[tensors[which][0]].itemsize
    datatype = data.draw(st.sampled_from([d for d in FIXED if DTYPES[d].itemsize != width]), label="datatype")

    def retype(header: dict[str, Any]) -> None:
        header["inputs"][which]["datatype"] = datatype

    with pytest.raises(V2ProtocolError):
        parse_infer_request(*edit_header(body, json_size, retype))


@PROPERTIES
@given(st.lists(st.integers(1, 3), min_size=0, max_size=80), st.integers(0, 2**80))
@example(dims=[2] * 40, huge=2**40)
def test_shapes_numpy_cannot_hold_never_crash(dims: list[int], huge: int) -> None:
    """Shapes valid by the protocol's words (non-negative integers) that NumPy cannot make: more than its 64
    dimensions, or a zero-size tensor whose other dimensions, times the element size, overflow its index type."""
    for datatype in ("INT8", "INT64"):
        for shape in (dims, [1] * 65, [0, huge, huge], [huge, 0]):
            count = math.prod(shape)
            tensor = {"name": "x", "datatype": datatype, "shape": shape}
            body = json.dumps({"inputs": [{**tensor, "data": [1] * count if count <= 300 else [1]}]}).encode()
            parse_or_refuse(body, None)
            size = min(count, 300) * DTYPES[datatype].itemsize
            head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}).encode()
            parse_or_refuse(head + b"\1" * size, len(head))


@PROPERTIES
@given(st.text(max_size=30))
def test_any_bytes_strings_in_json_data(text: str) -> None:
    """BYTES elements sent as JSON strings; JSON can carry lone surrogates, which are not text at all."""
    for element in (text, text + "\ud800", "\udfff" + text):
        body = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": [element]}]})
        parse_or_refuse(body.encode(), None)


@PROPERTIES
@given(st.text(max_size=12) | st.binary(max_size=12).map(lambda b: b.decode("latin-1")))
@example("\xb2")  # a superscript two: str.isdigit() says yes, int() says no
@example("\u0661\u0662")  # Arabic-Indic digits, which int() reads: still not what the protocol means
def test_any_header_length_value(value: str) -> None:
    """The header's value as Starlette hands it over: any latin-1 text."""
    try:
        length = parse_header_length(value)
    except V2ProtocolError:
        return
    assert isinstance(length, int) and length >= 0 and value.strip().isascii()
