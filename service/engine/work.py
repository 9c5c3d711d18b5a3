"""A work item: one step on its way through the batcher (service/engine/batcher.py) and the engine thread
(service/engine/core.py).

Ownership of the fields follows the item's path: the event loop fills the request fields and, for a session, the
record it loaded; the engine thread then owns the chunking fields and the results until it hands the item back to
the event loop, which writes the session and answers the caller. Only one side touches an item at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.engine.steps import SampleNext, TokenKind
from service.engine.topk import TokenProb
from service.state.store import SessionRecord

if TYPE_CHECKING:
    from service.engine.streams import StreamRow

State = tuple[np.ndarray, np.ndarray]  # h, c: each (layers, hidden)


@dataclass(eq=False)
class WorkItem:
    """Feed `ids` (T,) int64, T >= 1, to a session or a stateless row."""

    ids: np.ndarray
    session_id: str | None = None  # None: stateless, nothing is read from or written to the store
    all_logits: bool = False
    expected_position: int | None = None  # refuse (PositionConflict) unless the session is at this position
    state: State | None = None  # the state the next chunk runs from: None is zeros; sessions: what was loaded
    start_position: int = 0  # stateless rows only: the position `state` is at
    kind: TokenKind = "prompt"
    sample_next: SampleNext | None = None
    top_k: int = 0  # > 0: the step's answer carries the k most likely next tokens, computed for the whole batch
    # Filled in on the event loop.
    future: asyncio.Future[object] = field(init=False, repr=False)
    enqueued_at: float = field(init=False, default=0.0)  # time.monotonic()
    read: SessionRecord | None = field(init=False, default=None)  # the record loaded: its version for the CAS
    origin: State | None = field(init=False, default=None)  # the state loaded, to undo to
    retries: int = field(init=False, default=0)  # compare-and-set conflicts retried (no expected_position)
    stream: StreamRow | None = field(init=False, default=None)  # a generation's step, queued by the engine thread
    # Owned by the engine thread while the item is there. A long input is fed in chunks, one per batch turn, so
    # other steps run in between (chunked prefill).
    fed: int = field(init=False, default=0)  # tokens of `ids` already fed
    pieces: list[np.ndarray] = field(init=False, default_factory=list)  # all_logits: the chunks' logits so far
    logits: np.ndarray | None = field(init=False, default=None)  # the result: (T, V) or the last (V,)
    token: int | None = field(init=False, default=None)  # the drawn next token (sample_next)
    top: list[TokenProb] | None = field(init=False, default=None)  # the top-k next tokens (top_k)

    def base(self) -> tuple[int, int]:
        """The session's position and record version this step builds on (what its write compares and sets)."""
        if self.stream is not None:
            assert self.stream.version is not None
            return self.stream.position, self.stream.version
        assert self.read is not None
        return self.read.position, self.read.version

    def reset(self) -> None:
        """Back to the start, to run again on a newly loaded state (after a compare-and-set conflict)."""
        self.fed, self.pieces, self.read, self.origin, self.state = 0, [], None, None, None
        self.logits, self.token, self.top = None, None, None
