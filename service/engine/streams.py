"""A generation's persistent row: the batcher schedules a stream's next step itself, right after drawing its token.

A stream used to be a loop in its caller: submit a step, await it, hand the token out, submit the next. Every
token then paid a round trip through the event loop's scheduler (batcher task -> future -> generator task ->
submit -> batcher task) on top of the model. A StreamRow lives in the batcher instead: once a batch has drawn a
row's token, the batcher writes the session (compare-and-set, in the batch's one `save_many`), puts the token in
the row's queue and queues the row's next step at once. The consumer takes whatever tokens are ready, all of them
in one go when it lags behind (one SSE write for several events).

What was sent. The row runs ahead of its consumer by at most `window` tokens, each already written to the session
(a token is handed out only after its step's write). Every token carries the state after it, so a consumer that
stops early puts the session back at the last token it sent (the generator does that, under the session's lease,
after `Batcher.stop_stream` has made sure no step of the row is queued, running or being written).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.engine.sampling import StopMatcher
from service.engine.steps import SampleNext

if TYPE_CHECKING:
    from service.engine.batcher import WorkItem

FinishReason = Literal["length", "stop"]
STREAM_WINDOW = 16  # tokens a stream may run ahead of its consumer: enough to fill an SSE write when the client
# lags, small enough that a client that goes away wastes little work and its session is put back cheaply


@dataclass(frozen=True, slots=True)
class Emitted:
    """A token the row fed to its session (or stateless state), ready for the consumer."""

    token: int
    position: int  # the session's position after it
    h: np.ndarray  # (layers, hidden): the state after it, to put the session back here if it is the last sent
    c: np.ndarray  # (layers, hidden)
    version: int | None  # the session's record version after the write; None for stateless rows
    at: float  # time.perf_counter() when it was ready


class StreamRow:
    """One generation's row: what to feed next, the state it goes to, and the tokens waiting for the consumer.

    The batcher (on the event loop) calls `advance`, `fail` and `settle`; the consumer calls `take`.
    """

    def __init__(
        self,
        *,
        session_id: str | None,
        next_token: int,
        h: np.ndarray,
        c: np.ndarray,
        position: int,
        version: int | None,
        draw: SampleNext,
        max_tokens: int,
        stop: StopMatcher,
        chars: Sequence[str],
        window: int = STREAM_WINDOW,
    ) -> None:
        self.session_id = session_id
        self.next_token = next_token  # drawn, not fed yet
        self.h, self.c = h, c  # (layers, hidden) each: the state next_token is fed to
        self.position, self.version = position, version
        self._draw = draw  # its index is the index of the token the next step draws
        self.remaining = max_tokens  # tokens still to feed
        self._stop, self.chars = stop, chars  # token id -> its character
        self.window = window
        self.ready: deque[Emitted] = deque()
        self.finish: FinishReason | None = None
        self.error: BaseException | None = None
        self.stopped = False  # the consumer has gone: run nothing more, write nothing more
        self.busy = False  # a step of the row is queued or in a batch (owned by the batcher)
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self.on_taken: Callable[[], None] | None = None  # set by the batcher while the row waits for its consumer
        self.item_in_flight: WorkItem | None = None  # the batcher's: the row's queued or running step

    @property
    def ended(self) -> bool:
        return self.finish is not None or self.error is not None

    @property
    def wants_step(self) -> bool:
        """Whether the row's next step should be queued now: not ended, not stopped, room in its window."""
        return not (self.ended or self.stopped) and len(self.ready) < self.window

    def sample_next(self) -> SampleNext:
        return self._draw

    @property
    def matched(self) -> str | None:
        return self._stop.matched

    def advance(self, drawn: int, h: np.ndarray, c: np.ndarray, position: int, version: int | None) -> None:
        """The step that fed `next_token` is written: hand that token out, and move on to the one it drew."""
        token = self.next_token
        self.ready.append(Emitted(token, position, h, c, version, time.perf_counter()))
        self.h, self.c, self.position, self.version = h, c, position, version
        self.next_token = drawn
        d = self._draw
        self._draw = SampleNext(d.temperature, d.top_k, d.top_p, d.seed, d.index + 1)
        self.remaining -= 1
        if self._stop.feed(self.chars[token]) is not None:
            self.finish = "stop"
        elif self.remaining == 0:
            self.finish = "length"
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        """The stream cannot go on (its session expired, a conflict, draining): the consumer gets `exc` after the
        tokens already written."""
        if not self.ended:
            self.error = exc
        self._wake.set()

    def claim(self) -> None:
        """The batcher queued a step of the row."""
        self.busy = True
        self._idle.clear()

    def settle(self) -> None:
        """The batcher let go of the row: no step of it is queued, running or being written."""
        self.busy = False
        self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    async def take(self) -> list[Emitted]:
        """Every token ready now, waiting for one if there is none; [] once the stream has finished and every
        token was taken. Raises the row's error once the tokens before it were taken."""
        while not self.ready:
            if self.error is not None:
                raise self.error
            if self.finish is not None:
                return []
            self._wake.clear()
            await self._wake.wait()
        out = list(self.ready)
        self.ready.clear()
        resume, self.on_taken = self.on_taken, None
        if resume is not None:
            resume()
        return out
