"""A generation's persistent row: the engine thread schedules a stream's next step itself, right after drawing its
token.

A stream used to be a loop in its caller: submit a step, await it, hand the token out, submit the next. Every
token then paid a round trip through the event loop (batcher -> future -> generator task -> submit -> batcher) on
top of the model. A StreamRow lives in the engine instead: once a batch has drawn a row's token, the engine thread
queues the row's next step at once, and hands the token to the event loop with the rest of the batch; there the
session is written (compare-and-set, in the batch's one `save_many`) and the token goes to the row's queue. The
consumer takes whatever tokens are ready, all of them in one go when it lags behind (one SSE write for several).

Two sides, each owning its fields. The engine thread owns the cursor (`next_token`, `h`, `c`, the draw's index,
the tokens left, the stop matcher, `computed`); the event loop owns what was written and handed out (`position`,
`version`, `ready`, `finish`, `error`, `taken`, `stopped`). The two flags the other side reads (`stopped`,
`error`, `taken`) are plain attributes read under the GIL; parking and resuming go through the engine thread's
lock.

What was sent. The row runs ahead of its consumer by at most `window` tokens, each already written to the session
before it is handed out. Every token carries the state after it, so a consumer that stops early puts the session
back at the last token it sent (the generator does that, under the session's lease, after `stop_stream` has made
sure nothing of the row is queued, running or being written).
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
    from service.engine.work import WorkItem

FinishReason = Literal["length", "stop"]
STREAM_WINDOW = 16  # tokens a stream may run ahead of its consumer: enough to fill an SSE write when the client
# lags, small enough that a client that goes away wastes little work and its session is put back cheaply
MAX_GROUP_TOKENS = STREAM_WINDOW // 2  # a group never waits for a parked row: a row parks with a window's worth ready


@dataclass(frozen=True, slots=True)
class Grouping:
    """When the consumer is woken for the tokens ready: at once for a stream's first token, its end and its error;
    otherwise once `tokens` are ready or the oldest has waited `delay_s`, whichever comes first.

    Each wake-up costs the event loop a task switch, a frame and a socket write whatever it carries; one token each
    made those most of its work with many streams. With 64 SSE streams, groups of 8 measured 1.35-1.38x the
    tokens/s of single tokens and 5-10% more than groups of 4 (the bench's optimisations table measures 8 against 1);
    one stream is paced by the engine and gains little. `tokens=1` hands out every token as soon as it is written."""

    tokens: int = MAX_GROUP_TOKENS
    delay_s: float = 0.02


@dataclass(slots=True)
class Emitted:
    """A token the row fed to its session (or stateless state), ready for the consumer. Not frozen, though nothing
    changes one: one is made per token, and a frozen dataclass's __init__ costs three times as much."""

    token: int
    position: int  # the session's position after it
    h: np.ndarray  # (layers, hidden): the state after it, to put the session back here if it is the last sent
    c: np.ndarray  # (layers, hidden)
    version: int | None  # the session's record version after the write; None for stateless rows
    at: float  # time.perf_counter() when it was ready


@dataclass(slots=True)
class RowStep:
    """What one step of a row computed, on its way from the engine thread to the event loop (one per token: not
    frozen, as Emitted)."""

    row: StreamRow
    token: int  # the token the step fed
    h: np.ndarray  # (layers, hidden): the state after it
    c: np.ndarray
    finish: FinishReason | None  # the generation ends with this token


class StreamRow:
    """One generation's row; see the module docstring for which side owns what."""

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
        grouping: Grouping = Grouping(),
    ) -> None:
        self.session_id = session_id
        self.chars = chars  # token id -> its character
        self.window = window
        # The engine thread's cursor.
        self.next_token = next_token  # drawn, not fed yet
        self.h, self.c = h, c  # (layers, hidden) each: the state next_token is fed to
        self._draw = draw  # its index is the index of the token the first step draws (`sample_next`)
        self._remaining = max_tokens  # tokens still to feed
        self._stop = stop
        self.computed = 0  # tokens fed so far
        self.work: WorkItem | None = None  # the engine thread's: the work item it reuses for the row's steps
        # The event loop's side.
        self.position, self.version = position, version
        self.ready: deque[Emitted] = deque()
        self.finish: FinishReason | None = None
        self.error: BaseException | None = None
        self.stopped = False  # the consumer has gone: run nothing more, write nothing more
        self.taken = 0  # tokens the consumer has taken
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._grouping = grouping
        self._hold: asyncio.TimerHandle | None = None  # wakes the consumer for tokens held back: see Grouping
        self.resume: Callable[[StreamRow], None] | None = None  # set by the batcher: unparks the row

    # ---- the engine thread -----------------------------------------------------------------------------------
    @property
    def runnable(self) -> bool:
        """Whether the row may take another step (read by the engine thread)."""
        return not self.stopped and self.error is None

    @property
    def group_tokens(self) -> int:
        """Tokens the consumer is woken for at a time (Grouping.tokens); fixed for the row's life."""
        return self._grouping.tokens

    @property
    def window_full(self) -> bool:
        return self.computed - self.taken >= self.window

    def sample_next(self) -> SampleNext:
        """How the next step draws: the generation's parameters at the index of the token it draws."""
        d = self._draw
        return SampleNext(d.temperature, d.top_k, d.top_p, d.seed, d.index + self.computed)

    def step_done(self, drawn: int, h: np.ndarray, c: np.ndarray) -> RowStep:
        """The step that fed `next_token` ran: move the cursor on to the token it drew."""
        token = self.next_token
        self.next_token, self.h, self.c = drawn, h, c
        self._remaining -= 1
        self.computed += 1
        finish: FinishReason | None = None
        if self._stop.stops and self._stop.feed(self.chars[token]) is not None:
            finish = "stop"
        elif self._remaining == 0:
            finish = "length"
        if finish is not None:
            self._remaining = 0
        return RowStep(self, token, h, c, finish)

    @property
    def cursor_ended(self) -> bool:
        return self._remaining <= 0

    @property
    def matched(self) -> str | None:
        return self._stop.matched

    # ---- the event loop --------------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.finish is not None or self.error is not None

    def advance(self, step: RowStep, position: int, version: int | None) -> None:
        """The step is written: hand its token out."""
        self.ready.append(Emitted(step.token, position, step.h, step.c, version, time.perf_counter()))
        self.position, self.version = position, version
        if step.finish is not None:
            self.finish = step.finish
        if self.finish is not None or not self.taken or len(self.ready) >= self._grouping.tokens:
            self._release()
        elif self._hold is None:
            self._hold = asyncio.get_running_loop().call_later(self._grouping.delay_s, self._release)

    def _release(self) -> None:
        """Wake the consumer for what is ready."""
        self._unhold()
        self._wake.set()

    def _unhold(self) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None

    def fail(self, exc: BaseException) -> None:
        """The stream cannot go on (its session expired, a conflict, draining): the consumer gets `exc` after the
        tokens already written."""
        if not self.ended:
            self.error = exc
        self._release()

    def claim(self) -> None:
        """The engine has the row."""
        self._idle.clear()

    def settle(self) -> None:
        """The engine let go of the row: nothing of it is queued, running or being written."""
        self._idle.set()
        self._release()

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
        self.taken += len(out)
        self._unhold()  # what it held back is taken
        if self.resume is not None:
            self.resume(self)
        return out
