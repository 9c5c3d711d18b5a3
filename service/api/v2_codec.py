"""The KServe V2 / Open Inference Protocol request and response bodies, with Triton's binary tensor extension.

Pure functions over bytes and NumPy arrays, free of FastAPI, so the router stays thin and the wire format is
tested on its own against the real `tritonclient`.

Binary extension: when the `Inference-Header-Content-Length` HTTP header is present, the body is that many bytes
of JSON followed by the raw tensors, in input order, of every input whose `parameters.binary_data_size` is set.
Fixed-size types are row-major little-endian; BYTES elements are each a 4-byte little-endian length then the
bytes. Responses use the same layout: the router sends `Content-Type: application/octet-stream` and the header
length when `encode_infer_response` returns one, plain `application/json` otherwise.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

# Wire datatypes and their little-endian NumPy dtypes; BYTES elements are Python bytes in an object array.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_INT_TYPES = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_LENGTH = struct.Struct("<I")
# NumPy 1.x's most dimensions (2.x allows 64); no tensor of this protocol needs more.
MAX_DIMS = 32
# The most bytes NumPy lets an array span; even an empty tensor's other dimensions must multiply to fit in it.
_MAX_ARRAY_BYTES = 2**63 - 1


class V2ProtocolError(ValueError):
    """A request body that breaks the protocol; the router answers HTTP 400 `{"error": message}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # the declared shape; DTYPES[datatype]; BYTES as an object array of bytes
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary_data: bool | None  # None: not said, so the request's binary_data_output decides
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferRequest:
    inputs: list[InferInput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: the request named none, so every output is returned
    binary_data_output: bool = False

    def input(self, name: str) -> InferInput | None:
        return next((i for i in self.inputs if i.name == name), None)


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header's value as an int (None when the header is absent)."""
    if value is None:
        return None
    text = value.strip()
    # ASCII digits only: isdigit() alone accepts superscripts such as the latin-1 "\xb2", which int() refuses.
    if not (text.isascii() and text.isdigit()):  # also refuses signs, which int() would accept
        raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value!r}")
    return int(text)


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode and validate an inference request body; raise V2ProtocolError on anything malformed."""
    if header_length is None:
        header_bytes, payload = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise V2ProtocolError(f"{HEADER_LENGTH_HEADER} is {header_length} but the body has only {len(body)} bytes")
        header_bytes, payload = body[:header_length], body[header_length:]
    header = _load_json_object(header_bytes)

    _check_keys(header, {"id", "parameters", "inputs", "outputs"}, "request")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2ProtocolError(f"request 'id' must be a string, got {request_id!r}")
    parameters = _parameters(header, "request")
    binary_data_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_data_output, bool):
        raise V2ProtocolError(f"parameters.binary_data_output must be a boolean, got {binary_data_output!r}")

    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2ProtocolError("'inputs' must be a non-empty list of tensors")
    offset = 0
    inputs: list[InferInput] = []
    for position, raw in enumerate(raw_inputs):
        tensor, offset = _parse_input(raw, position, payload, offset, binary_allowed=header_length is not None)
        if any(t.name == tensor.name for t in inputs):
            raise V2ProtocolError(f"input {tensor.name!r} appears more than once")
        inputs.append(tensor)
    if offset != len(payload):
        raise V2ProtocolError(
            f"the body has {len(payload)} bytes after the JSON header but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    return InferRequest(
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=_parse_outputs(header.get("outputs")),
        binary_data_output=binary_data_output,
    )


def select_outputs(request: InferRequest, available: Sequence[str]) -> tuple[list[str], set[str]]:
    """Which of the model's outputs to send, in order, and which of those as binary, as the request asked.

    Every output when the request names none; an output is binary if its own `binary_data` says so, else if
    the request's `binary_data_output` does.
    """
    if request.outputs is None:
        names = list(available)
        return names, set(names) if request.binary_data_output else set()
    unknown = [o.name for o in request.outputs if o.name not in available]
    if unknown:
        raise V2ProtocolError(f"unknown output {unknown[0]!r}; the model has {', '.join(available)}")
    binary = {
        o.name for o in request.outputs if (o.binary_data if o.binary_data is not None else request.binary_data_output)
    }
    return [o.name for o in request.outputs], binary


def encode_infer_response(
    model_name: str,
    model_version: str,
    id: str | None,
    outputs: Sequence[tuple[str, str, np.ndarray]],
    binary: set[str] | frozenset[str],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a response: (body, header length), the length None when no output is binary (plain JSON body).

    Each output is (name, datatype, array); the array must cast safely to the datatype (BYTES: bytes or str).
    Non-finite floats sent as JSON come out as NaN / Infinity, which Python's and tritonclient's JSON readers
    accept; ask for binary outputs to stay within strict JSON.
    """
    names = [name for name, _, _ in outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate output names in {names}")
    if not binary <= set(names):
        raise ValueError(f"binary outputs {sorted(binary - set(names))} are not among the outputs {names}")
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if id is not None:
        header["id"] = id
    if parameters:
        header["parameters"] = dict(parameters)
    blobs: list[bytes] = []
    encoded: list[dict[str, Any]] = []
    for name, datatype, array in outputs:
        if datatype not in DTYPES:
            raise ValueError(f"output {name!r}: unknown datatype {datatype!r}")
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(np.shape(array))}
        if name in binary:
            blob = _to_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = _to_json_data(array, datatype)
        encoded.append(tensor)
    header["outputs"] = encoded
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, None
    return header_bytes + b"".join(blobs), len(header_bytes)


# --- requests -------------------------------------------------------------------------------------------------


def _load_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise V2ProtocolError(f"the JSON header is not valid UTF-8: {e}") from None
    except ValueError as e:  # JSONDecodeError, and an integer beyond Python's 4300-digit limit for reading one
        raise V2ProtocolError(f"the JSON header is not valid JSON: {e}") from None
    except RecursionError:
        raise V2ProtocolError("the JSON header is nested too deeply") from None
    if not isinstance(value, dict):
        raise V2ProtocolError("the JSON header must be an object")
    return value


def _check_keys(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise V2ProtocolError(f"{where} has unknown field(s) {', '.join(map(repr, extra))}")


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2ProtocolError(f"{where} 'parameters' must be an object")
    return parameters


def _parse_input(
    raw: object, position: int, payload: bytes, offset: int, binary_allowed: bool
) -> tuple[InferInput, int]:
    """One input tensor and the payload offset after its binary data (unchanged for a JSON tensor)."""
    if not isinstance(raw, dict):
        raise V2ProtocolError(f"inputs[{position}] must be an object")
    _check_keys(raw, {"name", "shape", "datatype", "parameters", "data"}, f"inputs[{position}]")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise V2ProtocolError(f"inputs[{position}] needs a non-empty string 'name'")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:  # a list or an object is not even hashable
        raise V2ProtocolError(f"{where}: unsupported datatype {datatype!r}; supported: {', '.join(DTYPES)}")
    shape = _parse_shape(raw.get("shape"), DTYPES[datatype].itemsize, where)
    count = math.prod(shape)
    parameters = _parameters(raw, where)
    if "shared_memory_region" in parameters:
        raise V2ProtocolError(f"{where}: shared memory is not supported")
    size = parameters.get("binary_data_size")

    if size is None:
        if "data" not in raw:
            raise V2ProtocolError(f"{where} has neither 'data' nor parameters.binary_data_size")
        array = _from_json_data(raw["data"], datatype, count, where)
        return InferInput(name, datatype, shape, array.reshape(shape), parameters), offset

    if "data" in raw:
        raise V2ProtocolError(f"{where} has both 'data' and parameters.binary_data_size")
    if not binary_allowed:
        raise V2ProtocolError(f"{where} sets binary_data_size but the request has no {HEADER_LENGTH_HEADER} header")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise V2ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(payload):
        raise V2ProtocolError(
            f"{where}: binary_data_size {size} runs past the end of the body ({len(payload) - offset} bytes left)"
        )
    blob = payload[offset : offset + size]
    array = _from_binary(blob, datatype, count, where)
    return InferInput(name, datatype, shape, array.reshape(shape), parameters), offset + size


def _parse_shape(raw: object, itemsize: int, where: str) -> tuple[int, ...]:
    """The declared shape, refused unless NumPy can make an array of it (few enough dimensions, none too large),
    so that reshaping the data to it cannot fail later."""
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise V2ProtocolError(f"{where}: shape must be a list of non-negative integers, got {raw!r}")
    if len(raw) > MAX_DIMS:
        raise V2ProtocolError(f"{where}: shape has {len(raw)} dimensions; at most {MAX_DIMS} are supported")
    if math.prod(d for d in raw if d) * itemsize > _MAX_ARRAY_BYTES:
        raise V2ProtocolError(f"{where}: shape {raw} has more elements than any tensor can hold")
    return tuple(raw)


def _flatten(data: object, where: str) -> list[object]:
    """Row-major elements of a flat or nested JSON list (iterative: nesting depth cannot blow the stack)."""
    if not isinstance(data, list):
        raise V2ProtocolError(f"{where}: 'data' must be a list")
    flat: list[object] = []
    stack: list[Iterable[object]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json_data(data: object, datatype: str, count: int, where: str) -> np.ndarray:
    flat = _flatten(data, where)
    if len(flat) != count:
        raise V2ProtocolError(f"{where}: 'data' has {len(flat)} elements but the shape needs {count}")
    dtype = DTYPES[datatype]
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise V2ProtocolError(f"{where}: BYTES data in JSON must be strings")
        out = np.empty(count, dtype=object)
        try:
            out[:] = [v.encode("utf-8") for v in cast(list[str], flat)]
        except UnicodeEncodeError as e:  # JSON's \ud800 escapes can spell lone surrogates, which are not text
            raise V2ProtocolError(f"{where}: a BYTES string is not valid Unicode: {e}") from None
        return out
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise V2ProtocolError(f"{where}: BOOL data must be true or false")
        return np.array(flat, dtype=dtype)
    if datatype in _INT_TYPES:
        # bool is an int in Python but not in JSON; floats (1.0, NaN, Infinity) are not integers either.
        if not all(type(v) is int for v in flat):
            bad = next(v for v in flat if type(v) is not int)
            raise V2ProtocolError(f"{where}: {datatype} data must be integers, got {bad!r}")
        ints = cast(list[int], flat)
        info = np.iinfo(dtype)
        if ints and not (info.min <= min(ints) and max(ints) <= info.max):
            raise V2ProtocolError(f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]")
        return np.array(ints, dtype=dtype)
    # Floating point: JSON numbers, plus NaN / Infinity / -Infinity, which Python's JSON reader accepts.
    if not all(type(v) in (int, float) for v in flat):
        bad = next(v for v in flat if type(v) not in (int, float))
        raise V2ProtocolError(f"{where}: {datatype} data must be numbers, got {bad!r}")
    try:
        with np.errstate(over="ignore"):
            array = np.array(flat, dtype=dtype)
    except OverflowError:  # an integer beyond even float64's range
        raise V2ProtocolError(f"{where}: a value overflows {datatype}") from None
    if np.isinf(array).sum() != sum(1 for v in flat if isinstance(v, float) and math.isinf(v)):
        raise V2ProtocolError(f"{where}: a finite value overflows {datatype}")
    return array


def _from_binary(blob: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        return _decode_bytes_elements(blob, count, where)
    dtype = DTYPES[datatype]
    if len(blob) != count * dtype.itemsize:
        raise V2ProtocolError(
            f"{where}: binary_data_size is {len(blob)} but shape and {datatype} need {count * dtype.itemsize} bytes"
        )
    array = np.frombuffer(blob, dtype=dtype).copy()  # a writable copy, not a view pinning the whole body
    if datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise V2ProtocolError(f"{where}: BOOL bytes must be 0 or 1")
    return array


def _decode_bytes_elements(blob: bytes, count: int, where: str) -> np.ndarray:
    if 4 * count > len(blob):  # checked before allocating: a huge declared shape must not exhaust memory
        raise V2ProtocolError(
            f"{where}: binary_data_size is {len(blob)} but {count} BYTES elements need at least {4 * count} bytes"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(blob):
            raise V2ProtocolError(f"{where}: BYTES data ends before element {i} of {count} (its length prefix)")
        (length,) = _LENGTH.unpack_from(blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise V2ProtocolError(f"{where}: BYTES element {i} claims {length} bytes, more than remain")
        out[i] = blob[offset : offset + length]
        offset += length
    if offset != len(blob):
        raise V2ProtocolError(
            f"{where}: binary_data_size is {len(blob)} but the {count} BYTES elements take {offset} bytes"
        )
    return out


def _parse_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise V2ProtocolError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            raise V2ProtocolError(f"outputs[{position}] must be an object")
        _check_keys(item, {"name", "parameters"}, f"outputs[{position}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise V2ProtocolError(f"outputs[{position}] needs a non-empty string 'name'")
        if any(o.name == name for o in outputs):
            raise V2ProtocolError(f"output {name!r} is requested more than once")
        parameters = _parameters(item, f"output {name!r}")
        if "shared_memory_region" in parameters:
            raise V2ProtocolError(f"output {name!r}: shared memory is not supported")
        if parameters.get("classification"):
            raise V2ProtocolError(f"output {name!r}: the classification extension is not supported")
        binary_data = parameters.get("binary_data")
        if binary_data is not None and not isinstance(binary_data, bool):
            raise V2ProtocolError(f"output {name!r}: binary_data must be a boolean, got {binary_data!r}")
        outputs.append(RequestedOutput(name, binary_data, parameters))
    return outputs


# --- responses ------------------------------------------------------------------------------------------------


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"BYTES elements must be bytes or str, got {type(value).__name__}")


def _cast(array: np.ndarray, datatype: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    if not np.can_cast(array.dtype, dtype, casting="safe"):
        raise ValueError(f"cannot send a {array.dtype} array as {datatype} without losing values")
    return np.ascontiguousarray(array, dtype=dtype)


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    array = np.asarray(array)
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(b)) + b for b in map(_as_bytes, array.ravel(order="C").tolist()))
    return _cast(array, datatype).tobytes(order="C")


def _to_json_data(array: np.ndarray, datatype: str) -> list[Any]:
    array = np.asarray(array)
    if datatype == "BYTES":
        try:
            return [_as_bytes(v).decode("utf-8") for v in array.ravel(order="C").tolist()]
        except UnicodeDecodeError as e:
            raise ValueError(f"a BYTES element is not UTF-8, so it can only be sent as binary: {e}") from None
    values: list[Any] = _cast(array, datatype).ravel(order="C").tolist()
    return values
