"""Generation: many streams advance together, one token per stream per shared batch (continuous batching).

A generation is a persistent row in the batcher (service/engine/streams.py). Each step feeds the stream's latest
token and draws the next one from the logits the step produces (`SampleNext`): the batcher samples every generating
row of a batch in one call, then queues each row's next step itself, without waiting for the consumer. No stream
runs a private model loop; whatever else is queued -- other streams' steps, prompts, predictions -- shares the
batch. The consumer takes the tokens that are ready, several at once when it lags (`stream_groups`).

The first token: with a prompt, the step that feeds the prompt draws it. A session continuing without a prompt has
only its stored state, so its first token is drawn from the output layer applied to the stored h
(service/engine/head.py), bit for bit the logits the full graph gave after the session's last token. A
generation's tokens are therefore the same whether its prompt came with it, was fed to the session earlier, or went
through the stateless route; and, drawn with counter-based seeded uniforms, whatever streams share its batches.
(Exactly so on the fp32 model; the int8 kernel quantizes each call's inputs with the call's own range, so its logits
depend slightly on the batch: README, "Streaming generation".)

Sessions, and what was sent. A generation holds its session's lock from its first step to its last, so a predict
on the same session waits for it. Each token's step writes the session's state (compare-and-set) before the token
is handed out; the row may run ahead of its consumer by a few tokens (STREAM_WINDOW), each carrying the state after
it. The consumer asking for the next event (or group) confirms that the previous ones were sent. A consumer that
stops -- cancelled by a client disconnect, or closing the generator because a send failed -- stops the row (after
which nothing of it is written), and the session is put back, compare-and-set on the row's last write, at the last
token that was sent. So the session keeps exactly the tokens that were sent, and its position counts them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import numpy as np

from service.engine.sampling import InvalidSamplingParams, StopMatcher, sample_row, validate_params
from service.engine.steps import SampleNext, StepResult
from service.engine.streams import Emitted, FinishReason, Grouping, StreamRow
from service.errors import InvalidInput, TooManyStreams

if TYPE_CHECKING:
    from service.engine.engine import Engine, SessionLease
    from service.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 100


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Validated: max_tokens within the server's limit, a seed always set (drawn when the client gave none)."""

    max_tokens: int
    temperature: float  # 0 = greedy
    top_k: int  # 0 = off
    top_p: float  # 1 = off
    seed: int
    stop: tuple[str, ...]


@dataclass(slots=True)  # not frozen: one per token (a frozen __init__ costs three times as much)
class Token:
    """One generated token; `position` is the session's (or stateless row's) position after it."""

    token: str
    id: int
    position: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a generation."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: FinishReason
    position: int
    prompt_tokens: int
    stop: str | None  # the stop string the text ends with, when finish_reason is "stop"


Event = Token | Finished


@dataclass(frozen=True, slots=True)
class Plan:
    """A generation checked and ready to run; made before a response starts, so its errors get an HTTP status."""

    params: GenerationParams
    prompt: np.ndarray | None  # (T,) int64 fed before generating, or None to continue from the state
    session_id: str | None  # None: stateless, from a zero state
    started: float  # time.perf_counter() when the request came: time to first token counts from here
    expected_position: int | None = None  # sessions: refuse (PositionConflict) unless the session is there
    owner: str = ""  # the API key's principal ("" without keys): its concurrent generations are limited
    slot: StreamSlot | None = field(default=None, compare=False)  # the generation's place in the owner's limit


class StreamSlot:
    """One of an owner's concurrent generations, taken when the plan is made (check and count in one step, no
    await in between, so concurrent requests cannot all pass the check) and given back when its stream ends --
    or when a plan that never streamed is dropped."""

    def __init__(self, counts: Counter[str], owner: str, metrics: Metrics) -> None:
        self._counts, self._owner, self._metrics = counts, owner, metrics
        self._held = True
        counts[owner] += 1
        metrics.streams_in_progress.inc()

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._counts[self._owner] -= 1
        if not self._counts[self._owner]:
            del self._counts[self._owner]
        self._metrics.streams_in_progress.dec()

    def __del__(self) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a stream stands: the token to feed next, and the state it will be fed to."""

    next_token: int
    h: np.ndarray  # (layers, hidden)
    c: np.ndarray  # (layers, hidden)
    position: int
    version: int | None  # the session's record version after the last write; None for stateless rows


class Generator:
    """Runs generations through the engine's public steps; one per engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._streams: Counter[str] = Counter()  # owner -> generations running now

    def params(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationParams:
        """Check sampling parameters against the model and the settings; InvalidInput names what is wrong."""
        limit = self._engine.config.max_generate_tokens
        tokens = min(DEFAULT_MAX_TOKENS, limit) if max_tokens is None else max_tokens
        if not 1 <= tokens <= limit:
            raise InvalidInput(
                f"max_tokens must be between 1 and the server's max_generate_tokens {limit}, got {tokens}",
                code="too_many_tokens" if tokens > limit else "invalid_request",
            )
        try:
            validate_params(temperature, top_k, top_p, self._engine.model.metadata.config.vocab_size, seed)
            StopMatcher(stop)
        except (InvalidSamplingParams, TypeError) as exc:
            raise InvalidInput(str(exc)) from None
        return GenerationParams(
            max_tokens=tokens,
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            seed=secrets.randbits(64) if seed is None else int(seed),
            stop=tuple(stop),
        )

    async def prepare(
        self,
        params: GenerationParams,
        *,
        session_id: str | None = None,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        expected_position: int | None = None,
        owner: str = "",
    ) -> Plan:
        """Check everything that can be checked before streaming: serving, the prompt, the session's existence,
        the key's concurrent generations."""
        started = time.perf_counter()
        engine = self._engine
        engine.check_accepting_new()  # new streams are refused once shutdown has begun
        self._check_streams(owner)  # fail fast, before the awaits below
        prompt = engine.tokenize(text, tokens, required=False)
        if session_id is not None:
            # SessionNotFound, SessionExpired, PositionConflict answered with their status, not mid-stream.
            await engine.get_session(session_id, expected_position=expected_position)
        elif expected_position is not None:
            raise InvalidInput("expected_position applies to sessions only")
        self._check_streams(owner)  # and again with the count, in one step: no await between them
        return Plan(
            params=params,
            prompt=prompt,
            session_id=session_id,
            started=started,
            expected_position=expected_position,
            owner=owner,
            slot=StreamSlot(self._streams, owner, engine.metrics),
        )

    def _check_streams(self, owner: str) -> None:
        limit = self._engine.config.max_streams_per_key
        if owner and limit and self._streams[owner] >= limit:
            raise TooManyStreams(limit)

    async def run(self, plan: Plan) -> Finished:
        """The whole generation at once, or nothing: a generation that does not finish (a request timeout cancels
        it, a step fails) puts its session back where it was before it, so "nothing changed" is true."""
        async with aclosing(self.stream_groups(plan, all_or_nothing=True)) as groups:
            async for group in groups:
                if isinstance(group[-1], Finished):
                    return group[-1]
        raise AssertionError("a generation always ends with Finished")

    async def stream(self, plan: Plan) -> AsyncGenerator[Event, None]:
        """Token events as they are produced, then Finished. Close it (aclose) when stopping early: the session
        keeps exactly the tokens consumed (a token counts as consumed once the next event is asked for)."""
        run = _Run(self, plan, all_or_nothing=False)
        try:
            await run.start()
            while group := await run.next():
                for event in group:
                    yield event
                    run.confirm(1)
        finally:
            await _closed(run)

    async def stream_groups(self, plan: Plan, *, all_or_nothing: bool = False) -> AsyncGenerator[list[Event], None]:
        """Like `stream`, but each item is every event ready at that moment (one, or several when the consumer
        lags behind the model): a whole group counts as consumed once the next one is asked for.
        `all_or_nothing`: unless Finished is reached, the session is put back where it was before the
        generation (prompt included)."""
        run = _Run(self, plan, all_or_nothing=all_or_nothing)
        try:
            await run.start()
            while group := await run.next():
                yield group
                run.confirm(len(group))
        finally:
            await _closed(run)


async def _closed(run: _Run) -> None:
    """`run.close()`, carried to its end even when the consumer's task was cancelled. sse-starlette runs a stream
    in an anyio task group and cancels it when the client goes away; anyio raises that cancellation again at every
    await inside the cancelled scope, so an unshielded close stopped at its first wait (for the engine to let go of
    the row) and never put the session back: it kept up to a window of tokens that were never sent. The shield
    holds only for this cleanup (one engine turn, one compare-and-set write); plain asyncio cancellation, raised
    once, never needed it."""
    with anyio.CancelScope(shield=True):
        await run.close()


@dataclass(slots=True)
class _Written:
    version: int | None = None  # the session's version after the generation's last write
    finished: bool = False


def _cursor(result: StepResult) -> _Cursor:
    assert result.token is not None  # every generation step asks the batcher for the next token
    version = None if result.record is None else result.record.version
    return _Cursor(result.token, result.h, result.c, result.position, version)


class _Run:
    """One generation in progress: its session's lease, its row in the batcher, and how much of it the consumer
    has sent. `start`, then `next` until it returns [], confirming what was sent; `close` always."""

    def __init__(self, generator: Generator, plan: Plan, *, all_or_nothing: bool) -> None:
        self._engine = generator._engine
        self._plan = plan
        self._all_or_nothing = all_or_nothing
        self._slot = plan.slot if plan.slot is not None else StreamSlot(generator._streams, plan.owner, self._metrics)
        self._stack = AsyncExitStack()
        self._lease: SessionLease | None = None
        self._written = _Written()
        self._row: StreamRow | None = None
        self._sent: _Cursor | Emitted | None = None  # the state after the last token the consumer sent
        self._given: deque[Emitted] = deque()  # handed out, not yet confirmed sent
        self._ids: list[int] = []
        self._last = plan.started  # when the previous token was ready
        self._done = False

    @property
    def _metrics(self) -> Metrics:
        return self._engine.metrics

    async def start(self) -> None:
        plan = self._plan
        if plan.session_id is not None:
            self._lease = await self._stack.enter_async_context(self._engine.session(plan.session_id))
        self._written = await self._stack.enter_async_context(self._undo_unless_finished())
        cursor = await self._first()
        self._written.version = cursor.version
        self._sent = cursor
        params = plan.params
        self._row = StreamRow(
            session_id=plan.session_id,
            next_token=cursor.next_token,
            h=cursor.h,
            c=cursor.c,
            position=cursor.position,
            version=cursor.version,
            draw=_draw(params, 1),
            max_tokens=params.max_tokens,
            stop=StopMatcher(params.stop),
            chars=self._engine.model.metadata.tokenizer.chars,
            grouping=Grouping(self._engine.config.stream_group_tokens, self._engine.config.stream_group_delay_s),
        )
        self._engine.open_stream(self._row)

    async def next(self) -> list[Event]:
        """The events ready now (waiting for the next one if none is): tokens, then Finished; [] after it."""
        row = self._row
        if self._done or row is None:
            return []
        emitted = await row.take()
        chars = row.chars
        events: list[Event] = []
        for e in emitted:
            (self._metrics.time_to_first_token if not self._ids else self._metrics.inter_token_latency).observe(
                e.at - self._last
            )
            self._last = e.at
            self._ids.append(e.token)
            self._given.append(e)
            events.append(Token(token=chars[e.token], id=e.token, position=e.position))
        if row.finish is not None and not row.ready:
            self._done = True
            self._written.finished = True  # before it is handed out: a consumer that closes after Finished keeps it
            prompt = self._plan.prompt
            events.append(
                Finished(
                    text="".join(chars[i] for i in self._ids),
                    tokens=tuple(self._ids),
                    finish_reason=row.finish,
                    position=row.position,
                    prompt_tokens=0 if prompt is None else len(prompt),
                    stop=row.matched,
                )
            )
        return events

    def confirm(self, count: int) -> None:
        """The consumer sent `count` more of the events handed out (tokens first, in order)."""
        for _ in range(min(count, len(self._given))):
            self._sent = self._given.popleft()

    async def close(self) -> None:
        """Stop the row, put the session back at the last token sent (or, all or nothing, before the
        generation), release the lease and the stream's slot."""
        try:
            row = self._row
            if row is not None:
                await self._engine.stop_stream(row)
                self._written.version = row.version
                sent = self._sent
                if (
                    not self._written.finished
                    and not self._all_or_nothing
                    and self._lease is not None
                    and sent is not None
                    and row.version is not None
                    and sent.version != row.version
                ):
                    # Tokens written ahead of the consumer were never sent: the session keeps exactly what was.
                    await self._lease.restore(sent.h, sent.c, sent.position, row.version)
        finally:
            try:
                await self._stack.aclose()
            finally:
                self._slot.release()

    @asynccontextmanager
    async def _undo_unless_finished(self) -> AsyncIterator[_Written]:
        """All or nothing: remember the session as it was; if the generation ends before Finished (cancelled,
        failed), write it back, compare-and-set on the generation's own last write."""
        written = _Written()
        lease = self._lease
        if not self._all_or_nothing or lease is None:
            yield written
            return
        record, h, c = await lease.read()
        try:
            yield written
        finally:
            if not written.finished and written.version is not None:
                await lease.restore(h, c, record.position, written.version)

    async def _first(self) -> _Cursor:
        """Feed the prompt (drawing the first token in the same step), or draw it from the stored state."""
        engine, plan, lease = self._engine, self._plan, self._lease
        first = _draw(plan.params, 0)
        if plan.prompt is not None:
            if lease is None:
                return _cursor(await engine.step(plan.prompt, sample_next=first))
            step = await lease.step(plan.prompt, expected_position=plan.expected_position, sample_next=first)
            return _cursor(step)
        version: int | None = None
        if lease is None:
            h = np.zeros(engine.model.state_shape, dtype=np.float32)  # (layers, hidden)
            c = np.zeros_like(h)
            position = 0
        else:
            record, h, c = await lease.read(expected_position=plan.expected_position)
            position, version = record.position, record.version
        logits = await engine.head_logits(h[-1:])  # (1, V): the top layer's h through the head
        token = sample_row(logits[0], first.temperature, first.top_k, first.top_p, first.seed, first.index)
        return _Cursor(token, h, c, position, version)


def _draw(params: GenerationParams, index: int) -> SampleNext:
    return SampleNext(
        temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=params.seed, index=index
    )
