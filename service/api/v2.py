"""The Open Inference Protocol (KServe V2) with Triton's sequence and binary tensor data extensions, so that KServe
and Triton clients (tritonclient.http with its defaults included) work unchanged.

The model takes `input_ids` (INT64, [-1, -1]: rows of token ids) and answers `logits` (FP32, [-1, vocab]): the
next-token logits after each row's last id. Without `sequence_id` a request is stateless and may carry several
rows, which share the engine's batches. With it (request parameters `sequence_id`, `sequence_start`,
`sequence_end`) its one row is fed to the sequence's session (service/engine/sequences.py). Errors have the
protocol's shape, `{"error": "..."}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from model.onnx_meta import ModelMetadata
from service import __version__
from service.api.access import anonymous, caller_of, owner_tag_of
from service.api.deps import EngineDep, SequencesDep
from service.api.errors import ErrorJSONResponse, for_anonymous_client
from service.api.schemas import ErrorResponse
from service.api.v2_codec import (
    HEADER_LENGTH_HEADER,
    InferRequest,
    V2ProtocolError,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    select_outputs,
)
from service.api.v2_errors import v2_error, v2_error_response
from service.engine.engine import Engine
from service.engine.sequences import Sequences, sequence_key
from service.errors import EngineError

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

INPUT = "input_ids"
OUTPUT = "logits"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "parameters", "sequence"]
MAX_UINT64 = 2**64 - 1
MAX_SEQUENCE_NAME = 256

ModelName = Annotated[str, Path(max_length=256, description="The served model's name (GET /v1/model).")]
Version = Annotated[str, Path(max_length=64, description="The model's version; only the served one exists.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'A malformed request, or a sequence that was never started: `{"error": "..."}`.'},
    404: {"description": 'No such model or version: `{"error": "..."}`.'},
    422: {"model": ErrorResponse, "description": "A path parameter out of bounds (name or version too long)."},
    503: {"description": 'Not ready, or draining: `{"error": "..."}`.'},
}


@dataclass(frozen=True, slots=True)
class SequenceParams:
    id: int | str
    start: bool
    end: bool


def sequence_params(parameters: dict[str, Any]) -> SequenceParams | None:
    """Triton's sequence parameters; None for a stateless request (no sequence_id, or Triton's "none": 0 or "")."""
    sequence_id = parameters.get("sequence_id")
    start = parameters.get("sequence_start", False)
    end = parameters.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise V2ProtocolError("parameters.sequence_start and sequence_end must be booleans")
    if sequence_id is None or sequence_id == 0 or sequence_id == "":
        if start or end:
            raise V2ProtocolError("sequence_start and sequence_end need a sequence_id")
        return None
    valid_int = isinstance(sequence_id, int) and not isinstance(sequence_id, bool) and 0 < sequence_id <= MAX_UINT64
    valid_str = isinstance(sequence_id, str) and len(sequence_id) <= MAX_SEQUENCE_NAME
    if not (valid_int or valid_str):
        raise V2ProtocolError(
            f"parameters.sequence_id must be an unsigned 64-bit integer or a string of at most "
            f"{MAX_SEQUENCE_NAME} characters, got {sequence_id!r}"
        )
    return SequenceParams(sequence_id, start, end)


def input_rows(request: InferRequest) -> np.ndarray:
    """The request's token ids, (rows, tokens) int64; the values are checked by the engine."""
    unknown = [t.name for t in request.inputs if t.name != INPUT]
    if unknown:
        raise V2ProtocolError(f"unknown input {unknown[0]!r}; the model takes only {INPUT!r}")
    tensor = request.input(INPUT)
    if tensor is None:
        raise V2ProtocolError(f"the request lacks the input {INPUT!r}")
    if tensor.datatype != "INT64":
        raise V2ProtocolError(f"input {INPUT!r} must be INT64, got {tensor.datatype}")
    if len(tensor.shape) != 2 or 0 in tensor.shape:
        raise V2ProtocolError(
            f"input {INPUT!r} must have shape [rows, tokens], each at least 1, got {list(tensor.shape)}"
        )
    rows: np.ndarray = tensor.data.astype(np.int64, copy=False)
    return rows


def served(engine: Engine, name: str, version: str | None) -> ModelMetadata:
    # The engine is the one the path names: the model registry chose it, or refused the name or version
    # (404 model_not_found) before the route ran (service/api/deps.py).
    return engine.model.metadata


# ---- server --------------------------------------------------------------------------------------------------
@router.get("", responses=ERRORS)
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "lstm-serve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", responses=ERRORS)
async def live() -> dict[str, bool]:
    """200 while the process is up."""
    return {"live": True}


@router.get("/health/ready", response_model=None, responses=ERRORS)
async def ready(engine: EngineDep) -> dict[str, bool] | ErrorJSONResponse:
    """200 once the model is loaded and warm (and the state store reachable); 503 otherwise."""
    if engine.ready and engine.store_available:
        return {"ready": True}
    return v2_error(503, "not ready")


# ---- model ---------------------------------------------------------------------------------------------------
def _metadata(engine: Engine, name: str, version: str | None) -> dict[str, Any] | ErrorJSONResponse:
    try:
        meta = served(engine, name, version)
    except EngineError as exc:
        return v2_error_response(exc)
    return {
        "name": meta.name,
        "versions": [meta.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, meta.config.vocab_size]}],
    }


def _model_ready(engine: Engine, name: str, version: str | None) -> dict[str, Any] | ErrorJSONResponse:
    try:
        meta = served(engine, name, version)
    except EngineError as exc:
        return v2_error_response(exc)
    if not engine.ready:
        return v2_error(503, f"model {meta.name!r} is not ready")
    return {"name": meta.name, "ready": True}


@router.get("/models/{name}", response_model=None, responses=ERRORS)
async def model_metadata(name: ModelName, engine: EngineDep) -> dict[str, Any] | ErrorJSONResponse:
    """The model's inputs and outputs: input_ids INT64 [-1, -1] -> logits FP32 [-1, vocab]."""
    return _metadata(engine, name, None)


@router.get("/models/{name}/versions/{version}", response_model=None, responses=ERRORS)
async def model_version_metadata(
    name: ModelName, version: Version, engine: EngineDep
) -> dict[str, Any] | ErrorJSONResponse:
    """The model's metadata, for its served version."""
    return _metadata(engine, name, version)


@router.get("/models/{name}/ready", response_model=None, responses=ERRORS)
async def model_ready(name: ModelName, engine: EngineDep) -> dict[str, Any] | ErrorJSONResponse:
    """200 when the model can serve inferences."""
    return _model_ready(engine, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_model=None, responses=ERRORS)
async def model_version_ready(
    name: ModelName, version: Version, engine: EngineDep
) -> dict[str, Any] | ErrorJSONResponse:
    """200 when the model's served version can serve inferences."""
    return _model_ready(engine, name, version)


# ---- inference -----------------------------------------------------------------------------------------------
async def _infer(request: Request, engine: Engine, sequences: Sequences, name: str, version: str | None) -> Response:
    try:
        meta = served(engine, name, version)
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise V2ProtocolError("compressed request bodies are not supported; send the body uncompressed")
        parsed = parse_infer_request(
            await request.body(), parse_header_length(request.headers.get(HEADER_LENGTH_HEADER))
        )
        names, binary = select_outputs(parsed, [OUTPUT])
        rows = input_rows(parsed)
        sequence = sequence_params(parsed.parameters)
        if sequence is None:
            logits = await sequences.stateless(rows)  # (B, V)
        elif rows.shape[0] != 1:
            raise V2ProtocolError(f"a sequence request carries one row of {INPUT!r}, got {rows.shape[0]}")
        else:
            key = sequence_key(meta.name, sequence.id, caller_of(request))  # two keys' sequence 1 are two sequences
            owner = owner_tag_of(request)  # counted against the key's (or the anonymous client's) session limit
            logits = (
                await sequences.infer(key, sequence.id, rows[0], start=sequence.start, end=sequence.end, owner=owner)
            )[None]
        outputs = [(OUTPUT, "FP32", logits)] if OUTPUT in names else []
        body, header_length = encode_infer_response(meta.name, meta.version, parsed.id, outputs, binary)
    except EngineError as exc:
        return v2_error_response(for_anonymous_client(exc) if anonymous(request) else exc)
    except V2ProtocolError as exc:
        return v2_error_response(exc)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH_HEADER: str(header_length)})


INFER_DOC = {
    200: {
        "description": "JSON, or with binary outputs `application/octet-stream`: the JSON header (its length in "
        "the Inference-Header-Content-Length header) followed by the raw tensors."
    },
    **ERRORS,
}


@router.post("/models/{name}/infer", response_class=Response, responses=INFER_DOC)
async def infer(name: ModelName, request: Request, engine: EngineDep, sequences: SequencesDep) -> Response:
    """Inference: the body is the protocol's JSON, or with Triton's binary extension a JSON header (its length in
    the Inference-Header-Content-Length header) followed by raw tensors. Sequence parameters: sequence_id
    (uint64 or string), sequence_start (resets the state), sequence_end (frees it after answering)."""
    return await _infer(request, engine, sequences, name, None)


@router.post("/models/{name}/versions/{version}/infer", response_class=Response, responses=INFER_DOC)
async def infer_version(
    name: ModelName, version: Version, request: Request, engine: EngineDep, sequences: SequencesDep
) -> Response:
    """Inference on the model's served version (see the route without a version)."""
    return await _infer(request, engine, sequences, name, version)
