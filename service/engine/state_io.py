"""Session state export/import: h and C as base64 of little-endian float32, checked against the loaded model."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput, StateMismatch

DTYPE = "float32"
_WIRE = np.dtype("<f4")  # little-endian float32, whatever the host's byte order
# Positions stay below 2**53, where float64 (the Redis header, JSON readers) holds every integer exactly, and
# within int64 (the memory store's arrays); 2**50 leaves room for far more tokens than a session will ever read.
MAX_POSITION = 2**50


@dataclass(frozen=True, slots=True)
class PortableState:
    """A session's state in its portable form."""

    model_fingerprint: str
    position: int
    shape: tuple[int, int]  # of h and of c each: (layers, hidden)
    dtype: str
    h: str  # base64
    c: str  # base64


def encode_array(a: np.ndarray) -> str:
    return base64.b64encode(a.astype(_WIRE, copy=False).tobytes()).decode("ascii")


def decode_array(text: str, shape: tuple[int, int], name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"state.{name} is not valid base64: {exc}", code="invalid_state") from None
    expected = shape[0] * shape[1] * _WIRE.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"state.{name} holds {len(raw)} bytes; shape {list(shape)} of float32 needs {expected}",
            code="invalid_state",
        )
    a = np.frombuffer(raw, dtype=_WIRE).reshape(shape).astype(np.float32)
    if not np.isfinite(a).all():
        raise InvalidInput(f"state.{name} contains NaN or infinite values", code="invalid_state")
    return a


def export_state(fingerprint: str, position: int, h: np.ndarray, c: np.ndarray) -> PortableState:
    """h, c (layers, hidden) -> the portable form."""
    shape = (int(h.shape[0]), int(h.shape[1]))
    return PortableState(fingerprint, position, shape, DTYPE, encode_array(h), encode_array(c))


def import_state(state: PortableState, fingerprint: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The portable form -> h, c (layers, hidden), refused unless it belongs to the loaded model."""
    if state.model_fingerprint != fingerprint:
        raise StateMismatch(
            f"the state was exported from model {state.model_fingerprint}, but this server runs "
            f"{fingerprint}; states only transfer between identical weights"
        )
    if tuple(state.shape) != shape:
        raise StateMismatch(
            f"the state has shape {list(state.shape)}, but the loaded model's state is {list(shape)} (layers, hidden)"
        )
    if state.dtype != DTYPE:
        raise StateMismatch(f"the state has dtype {state.dtype!r}; only {DTYPE!r} is supported")
    if not 0 <= state.position <= MAX_POSITION:
        raise InvalidInput(f"state.position must be in [0, {MAX_POSITION}]", code="invalid_state")
    return decode_array(state.h, shape, "h"), decode_array(state.c, shape, "c")
