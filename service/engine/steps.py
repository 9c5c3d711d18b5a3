"""What a step of the model is, as the engine's callers see it: the draw it may make, and its result.

A *step* feeds token ids to one session (or to a stateless row) in a shared batch; `Engine.step` and
`SessionLease.step` take these and return a `StepResult`. The work item that carries a step through the batcher
is the batcher's own (`service/engine/batcher.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.engine.topk import TokenProb
from service.errors import PositionConflict
from service.state.store import SessionRecord

TokenKind = Literal["prompt", "generated"]


@dataclass(frozen=True, slots=True)
class StepResult:
    logits: np.ndarray  # (T, V) when the step asked for all positions, else (V,) for the last one
    position: int  # the session's position after the step (stateless: the starting position + T)
    record: SessionRecord | None  # the session as written (None for stateless rows)
    h: np.ndarray  # (layers, hidden): the state after the step
    c: np.ndarray  # (layers, hidden)
    token: int | None = None  # steps with `sample_next`: the next token, drawn from this step's last logits
    top: list[TokenProb] | None = None  # steps with `top_k`: the most likely next tokens, most likely first


@dataclass(frozen=True, slots=True)
class SampleNext:
    """Generation: after the step, draw the next token from its last logits (service/engine/sampling.py)."""

    temperature: float
    top_k: int
    top_p: float
    seed: int
    index: int  # the token's index within its generation: with the seed, it fixes the random draw


@dataclass(frozen=True, slots=True)
class StatelessRow:
    """A stateless step that continues from a state the caller holds (a stateless generation's cursor)."""

    h: np.ndarray  # (layers, hidden)
    c: np.ndarray  # (layers, hidden)
    position: int  # the position h and c are at


def check_position(record: SessionRecord, expected: int | None) -> None:
    """The one place a client's `expected_position` is compared: PositionConflict unless the session is there.
    (The compare-and-set of a step's write then guards the state between this read and the write.)"""
    if expected is not None and record.position != expected:
        raise PositionConflict(record.session_id, expected, record.position)
