"""Gate inspection: what every gate of every layer did for each character fed, from the weights in the ONNX file.

The NumPy reference (model/reference.py) runs the notes' equations in float64 on the served file's weights, from the
session's stored state (read under the session's lock); then the engine advances the session through the batcher
exactly as predict does, refusing if the session moved in between. The reference's final C, h and logits are
compared with what ONNX Runtime computed and the largest differences are returned with the gates: they show that
these are the served model's values, not an approximation of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.quantize import INT8, load_reference
from model.reference import GateTrace, ReferenceLSTM
from service.engine.ort import ModelLoadError
from service.engine.steps import StepResult
from service.engine.topk import TokenProb
from service.errors import InvalidInput
from service.state.store import SessionRecord

if TYPE_CHECKING:
    from service.engine.engine import Engine

log = logging.getLogger(__name__)

# float64 gates against ONNX Runtime's float32: a larger gap means the file and the running model differ. An int8
# model's kernel rounds its inputs and state to 8 bits per call, which moves logits by up to about 0.25 against the
# reference on its dequantized weights (tests/model/test_quantize.py states the bounds).
WARN_DEVIATION = 1e-3
WARN_DEVIATION_INT8 = 0.5


@dataclass(frozen=True, slots=True)
class Inspection:
    ids: np.ndarray  # (T,) the tokens fed
    start_position: int  # the position before the first of them
    layers: list[GateTrace]  # per layer: f, i, c_tilde, o, c, h, each (T, hidden) float64
    next: list[TokenProb]  # the most likely tokens after the input, from ONNX Runtime's logits
    position: int  # after the input
    record: SessionRecord | None  # the session as written; None when stateless
    deviation: dict[str, float]  # largest |reference - ONNX Runtime| of the final h, c and logits


class Inspector:
    """Gate inspection through the engine; the reference weights are read from the model file on first use."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reference: ReferenceLSTM | None = None
        self._load_lock = asyncio.Lock()
        self._warn_at = WARN_DEVIATION

    @property
    def chars(self) -> tuple[str, ...]:
        """The vocabulary, by token id."""
        return self._engine.model.metadata.tokenizer.chars

    async def inspect(
        self,
        *,
        session_id: str | None = None,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        top: int = 5,
    ) -> Inspection:
        """Feed the input (to the session, or from a zero state) and return every gate's activations."""
        engine = self._engine
        engine.check_serving()
        ids = engine.tokenize(text, tokens)
        assert ids is not None
        limit = engine.config.max_inspect_length
        if len(ids) > limit:
            raise InvalidInput(
                f"inspection returns vectors per character: at most {limit} characters, got {len(ids)}",
                code="text_too_long",
            )
        reference = await self._load()
        if session_id is None:
            h = np.zeros(engine.model.state_shape, dtype=np.float32)  # (layers, hidden)
            c = np.zeros_like(h)
            return self._compare(
                ids,
                0,
                await asyncio.to_thread(reference.run, ids[None], h[:, None], c[:, None]),
                await engine.step(ids, top_k=top),
                top,
            )
        async with engine.session(session_id) as lease:
            record, h, c = await lease.read()
            traced = await asyncio.to_thread(reference.run, ids[None], h[:, None], c[:, None])
            # Refused if the session moved between the read and the step: the gates must be of this state.
            result = await lease.step(ids, expected_position=record.position, top_k=top)
        return self._compare(ids, record.position, traced, result, top)

    def _compare(
        self,
        ids: np.ndarray,
        start: int,
        traced: tuple[np.ndarray, np.ndarray, np.ndarray, list[GateTrace]],
        result: StepResult,
        top: int,
    ) -> Inspection:
        logits, hn, cn, traces = traced  # (1, T, V), (L, 1, H), (L, 1, H), per layer (1, T, H)
        deviation = {
            "h": float(np.abs(hn[:, 0] - result.h).max()),
            "c": float(np.abs(cn[:, 0] - result.c).max()),
            "logits": float(np.abs(logits[0, -1] - result.logits).max()),
        }
        if max(deviation.values()) > self._warn_at:
            log.warning("gate inspection disagrees with ONNX Runtime", extra={"deviation": deviation})
        layers = [GateTrace(f=t.f[0], i=t.i[0], c_tilde=t.c_tilde[0], o=t.o[0], c=t.c[0], h=t.h[0]) for t in traces]
        return Inspection(
            ids=ids,
            start_position=start,
            layers=layers,
            next=result.top or [],  # computed with the batch (the step asked for top_k)
            position=result.position,
            record=result.record,
            deviation=deviation,
        )

    async def _load(self) -> ReferenceLSTM:
        if self._reference is None:
            async with self._load_lock:
                if self._reference is None:
                    served = self._engine.model
                    reference = await asyncio.to_thread(load_reference, served.path)  # int8: dequantized weights
                    if reference.metadata.fingerprint != served.metadata.fingerprint:
                        raise ModelLoadError(
                            f"{served.path} now holds model {reference.metadata.fingerprint}, not the served "
                            f"{served.metadata.fingerprint}"
                        )
                    self._reference = reference
                    if reference.metadata.quantization == INT8:
                        self._warn_at = WARN_DEVIATION_INT8
        return self._reference
