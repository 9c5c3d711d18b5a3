"""Dynamic batching, the engine's private core: work items of different sessions share ONNX Runtime runs.

Only the Engine (service/engine/engine.py) creates and drives the Batcher; every feature reaches it through the
Engine's public methods.

A work item is a generic *step*: feed some token ids to one session (or to a stateless row that brings its own
state or starts from zeros) and return the logits of the last position or of all positions. Prompts and, later,
generation loops (one token per step per stream) submit steps into the same queue, so many streams advance
together in shared batches.

The loop: take up to `max_batch_size` items, waiting at most `max_batch_delay_s` after the oldest one arrived;
never two items of one session in a batch (the later one waits for the next batch, keeping arrival order);
gather the sessions' states with ONE `load_many`, run ONNX Runtime on a dedicated worker thread so the event loop
keeps serving, write the states back with ONE `save_many`, compare-and-set on the version each item read.

Rows of different lengths share a batch as a staircase: all rows run together over the shortest length, then the
rows that are longer continue together from their carried state, and so on. That is one ORT run per distinct
length, like grouping by length, but the runs share their common prefix so the sequential LSTM steps total the
longest row's length, not the sum of the distinct lengths; it is exact on the exported graph, which takes no
`sequence_lens`. Measured on CPU (hidden 512, 2 layers, 1 thread), per batch: 16 rows of 1..32 tokens
27-33 ms staircase vs 44-48 ms grouped vs 32 ms padded with sequence_lens (a rewritten graph); one 64-token row
with seven 1-token rows 10 ms staircase or grouped vs 33-34 ms padded. Padding pays the longest length for every
row; the staircase never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.engine.ort import OnnxRuntime
from service.engine.sampling import SamplingBatch, sample
from service.engine.steps import SampleNext, StepResult, TokenKind, check_position
from service.engine.streams import StreamRow
from service.engine.topk import TokenProb, top_k_rows
from service.errors import Draining, EngineError, PositionConflict, VersionConflict
from service.metrics import Metrics
from service.state.store import SessionRecord, StateStore

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 32  # a step without expected_position, re-run after other writers changed its session:
# each conflict means another writer committed a step, so a step loses only while others keep winning


@dataclass(eq=False)
class WorkItem:
    """One step on its way through the batcher: feed `ids` (T,) int64, T >= 1, to a session or a stateless row."""

    ids: np.ndarray
    session_id: str | None = None  # None: stateless, nothing is read from or written to the store
    all_logits: bool = False
    expected_position: int | None = None  # refuse (PositionConflict) unless the session is at this position
    state: tuple[np.ndarray, np.ndarray] | None = None  # stateless rows only: h, c each (layers, hidden)
    start_position: int = 0  # stateless rows only: the position `state` is at
    kind: TokenKind = "prompt"
    sample_next: SampleNext | None = None
    top_k: int = 0  # > 0: the step's answer carries the k most likely next tokens, computed for the whole batch
    # Filled in by the batcher.
    future: asyncio.Future[StepResult] = field(init=False, repr=False)
    enqueued_at: float = field(init=False, default=0.0)
    read: SessionRecord | None = field(init=False, default=None)  # the record load_many read: version for CAS
    # A long input is fed in chunks, one per batch turn, so other steps run in between (chunked prefill).
    fed: int = field(init=False, default=0)  # tokens of `ids` already fed
    carry: tuple[np.ndarray, np.ndarray] | None = field(init=False, default=None)  # h, c after them
    pieces: list[np.ndarray] = field(init=False, default_factory=list)  # all_logits: the chunks' logits so far
    retries: int = field(init=False, default=0)  # compare-and-set conflicts retried (no expected_position)
    origin: tuple[np.ndarray, np.ndarray] | None = field(init=False, default=None)  # the state read, to undo to
    stream: StreamRow | None = field(init=False, default=None)  # a generation's step, queued by the batcher

    def base(self) -> tuple[int, int]:
        """The session's position and record version this step builds on (what its write compares and sets)."""
        if self.stream is not None:
            assert self.stream.version is not None
            return self.stream.position, self.stream.version
        assert self.read is not None
        return self.read.position, self.read.version


def staircase(
    runtime: OnnxRuntime,
    rows: Sequence[np.ndarray],
    h: np.ndarray,
    c: np.ndarray,
    all_logits: Sequence[bool],
    metrics: Metrics | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Run rows of different lengths from h, c (L, B, H); one ORT run per distinct length, sharing prefixes.

    Returns per row its logits ((T_i, V) or the last (V,)) and the final hn, cn (L, B, H).
    """
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    h = h.copy()
    c = c.copy()
    pieces: list[list[np.ndarray]] = [[] for _ in rows]
    done = 0
    for length in np.unique(lens).tolist():  # ascending
        active = np.flatnonzero(lens >= length).tolist()  # rows still running: (b,)
        ids = np.stack([rows[i][done:length] for i in active])  # (b, length - done)
        whole = len(active) == len(rows)
        t0 = time.perf_counter()
        logits, hn, cn = runtime.run(ids, h if whole else h[:, active], c if whole else c[:, active])
        if metrics is not None:
            metrics.inference_latency.observe(time.perf_counter() - t0)
        h[:, active] = hn  # (L, b, H) scattered back into the batch
        c[:, active] = cn
        for j, i in enumerate(active):
            if all_logits[i]:
                pieces[i].append(logits[j])  # (length - done, V)
            elif lens[i] == length:
                pieces[i].append(logits[j, -1])  # (V,): this row's last position
        done = length
    out = [np.concatenate(p) if all_logits[i] else p[0] for i, p in enumerate(pieces)]
    return out, h, c


@dataclass(frozen=True, slots=True)
class _Ran:
    """What the worker thread computed for a batch: per row its logits, the states after it, its drawn token and
    its top-k (for the rows that finish in this batch and asked for them)."""

    logits: list[np.ndarray]
    h: np.ndarray  # (L, B, H)
    c: np.ndarray  # (L, B, H)
    tokens: dict[int, int]
    top: dict[int, list[TokenProb]]


def _run_rows(
    runtime: OnnxRuntime,
    rows: Sequence[np.ndarray],
    h: np.ndarray,
    c: np.ndarray,
    items: Sequence[WorkItem],
    final: Sequence[bool],
    metrics: Metrics,
) -> _Ran:
    """The worker thread's whole share of a batch: the model, then sampling and top-k for every finishing row in
    one vectorised call each, so the event loop gets back finished answers."""
    logits, hn, cn = staircase(runtime, rows, h, c, [item.all_logits for item in items], metrics)
    done = [item if fin else None for item, fin in zip(items, final, strict=True)]
    tokens = _sample_next(done, logits)
    asking = [i for i, item in enumerate(done) if item is not None and item.top_k > 0]
    top: dict[int, list[TokenProb]] = {}
    if asking:
        last = np.stack([logits[i] if logits[i].ndim == 1 else logits[i][-1] for i in asking])  # (n, V)
        ks = [items[i].top_k for i in asking]
        top = dict(zip(asking, top_k_rows(last, ks, runtime.metadata.tokenizer), strict=True))
    return _Ran(logits, hn, cn, tokens, top)


def _sample_next(items: Sequence[WorkItem | None], logits: Sequence[np.ndarray]) -> dict[int, int]:
    """The next token of every row that asks for one, drawn in one vectorised call: row index -> token id."""
    rows = [(i, draw) for i, item in enumerate(items) if item is not None and (draw := item.sample_next) is not None]
    if not rows:
        return {}
    params = SamplingBatch.from_rows(
        [d.temperature for _, d in rows],
        [d.top_k for _, d in rows],
        [d.top_p for _, d in rows],
        [d.seed for _, d in rows],
        [d.index for _, d in rows],
    )
    last = np.stack([logits[i] if logits[i].ndim == 1 else logits[i][-1] for i, _ in rows])  # (n, V)
    return dict(zip((i for i, _ in rows), sample(last, params).tolist(), strict=True))


def _fail(item: WorkItem, exc: BaseException) -> None:
    row = item.stream
    if row is not None:
        if not item.future.done():
            row.fail(exc)
        row.settle()
    elif not item.future.done():  # a caller that was cancelled has nobody to tell
        item.future.set_exception(exc)


class Batcher:
    def __init__(
        self,
        runtime: OnnxRuntime,
        store: StateStore,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        prefill_chunk: int = 0,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.prefill_chunk = prefill_chunk  # 0: a whole input in one batch turn
        self._items: deque[WorkItem] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One worker thread: ORT runs one batch at a time and the event loop never blocks on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstm-serve-ort")
        self.batches = 0

    @property
    def queued(self) -> int:
        return len(self._items)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="lstm-serve-batcher")

    async def stop(self) -> None:
        """Accept nothing new, finish every queued item, then stop the loop and the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, item: WorkItem) -> StepResult:
        if self._closing:
            raise Draining()
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        item.enqueued_at = loop.time()
        self._items.append(item)
        self._wakeup.set()
        return await item.future

    def open_stream(self, row: StreamRow) -> None:
        """Start a generation's persistent row: from now on the batcher queues its steps itself."""
        if self._closing:
            raise Draining()
        self._queue_row(row)

    async def stop_stream(self, row: StreamRow) -> None:
        """Stop a row and wait until the batcher has let go of it: nothing of it is queued, running or being
        written afterwards (a step caught mid-way writes nothing, or is undone), so its version is final."""
        row.stopped = True
        row.on_taken = None
        item = row.item_in_flight
        if item is not None and not item.future.done():
            item.future.cancel()  # the batcher treats it as a caller that gave up
        if self._task is None or self._task.done():
            row.settle()  # no loop left to reach the queued step
        await row.idle()

    def _queue_row(self, row: StreamRow) -> None:
        if not row.wants_step:
            if not row.ended and not row.stopped:  # a full window: go on once the consumer has taken tokens
                row.on_taken = lambda: self._queue_row(row)
            row.settle()
            return
        if self._closing:
            row.fail(Draining())
            row.settle()
            return
        item = WorkItem(
            ids=np.array([row.next_token], dtype=np.int64),
            session_id=row.session_id,
            kind="generated",
            sample_next=row.sample_next(),
        )
        item.stream = row
        item.carry = item.origin = (row.h, row.c)  # the row holds its state: nothing to load
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()  # nobody awaits it: stop_stream cancels it to have nothing written
        item.enqueued_at = loop.time()
        row.item_in_flight = item
        row.claim()
        self._items.append(item)
        self._wakeup.set()

    async def _collect(self) -> list[WorkItem] | None:
        """The next batch, or None once closing with nothing left."""
        loop = asyncio.get_running_loop()
        while not self._items:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._items[0].enqueued_at + self.max_batch_delay_s
        while len(self._items) < self.max_batch_size and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        batch: list[WorkItem] = []
        deferred: list[WorkItem] = []
        sessions: set[str] = set()
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if item.future.done():  # its caller gave up before it ran: skip it, nothing is applied
                if item.stream is not None:
                    item.stream.settle()
                continue
            if item.session_id is not None:
                if item.session_id in sessions:  # never two steps of one session in a batch
                    deferred.append(item)
                    continue
                sessions.add(item.session_id)
            batch.append(item)
        self._items.extendleft(reversed(deferred))  # they go first next time, in their arrival order
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if batch is None:
                return
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except Exception as exc:  # a bug or a broken store: fail this batch, keep serving the next ones
                log.exception("batch of %d failed", len(batch))
                for item in batch:
                    _fail(item, exc)

    def _chunk(self, item: WorkItem) -> np.ndarray:
        """The part of the item's input this batch turn feeds: all that is left, or the next prefill chunk."""
        end = len(item.ids) if not self.prefill_chunk else item.fed + self.prefill_chunk
        return item.ids[item.fed : end]

    async def _run_batch(self, batch: list[WorkItem]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for item in batch:
            if not item.fed:  # a continuing chunk waited behind the others on purpose
                self.metrics.queue_wait.observe(started - item.enqueued_at)
        live = await self._load(batch)
        if not live:
            return
        layers, hidden = self.runtime.layers, self.runtime.hidden
        h = np.zeros((layers, len(live), hidden), dtype=np.float32)  # (L, B, H)
        c = np.zeros((layers, len(live), hidden), dtype=np.float32)
        for i, (_, state) in enumerate(live):
            if state is not None:
                h[:, i], c[:, i] = state
        items = [item for item, _ in live]
        rows = [self._chunk(item) for item in items]
        final = [item.fed + len(row) == len(item.ids) for item, row in zip(items, rows, strict=True)]
        self.batches += 1
        self.metrics.batch_size.observe(len(live))
        ran = await loop.run_in_executor(
            self._executor, _run_rows, self.runtime, rows, h, c, items, final, self.metrics
        )
        fed: dict[TokenKind, int] = {}
        for item, row in zip(items, rows, strict=True):  # one counter update per kind, not one label lookup per row
            fed[item.kind] = fed.get(item.kind, 0) + len(row)
        for kind, count in fed.items():
            self.metrics.tokens.labels(kind).inc(count)
        for i, item in enumerate(items):
            if not final[i]:
                self._continue(item, rows[i], ran, i)
        done = [i for i in range(len(items)) if final[i]]
        # A caller that gave up while its batch ran (a closed stream) gets nothing written: its session keeps
        # exactly what its client was told.
        session_rows = [i for i in done if items[i].session_id is not None and not items[i].future.done()]
        written: dict[int, SessionRecord | EngineError] = {}
        if session_rows:
            written = await self._write(live, session_rows, ran)
        for i in done:
            self._answer(items[i], ran, i, written.get(i))

    def _continue(self, item: WorkItem, row: np.ndarray, ran: _Ran, i: int) -> None:
        """An input fed only in part: carry its state, queue the rest behind what waits now (fair to the others)."""
        item.fed += len(row)
        item.carry = (ran.h[:, i].copy(), ran.c[:, i].copy())  # (L, H) each
        if item.all_logits:
            item.pieces.append(ran.logits[i])
        if not item.future.done():
            self._items.append(item)
            self._wakeup.set()

    async def _write(
        self,
        live: list[tuple[WorkItem, tuple[np.ndarray, np.ndarray] | None]],
        rows: list[int],
        ran: _Ran,
    ) -> dict[int, SessionRecord | EngineError]:
        """Write the finished session rows back in one compare-and-set call on the versions their steps read."""
        items = [live[i][0] for i in rows]
        bases = [item.base() for item in items]  # (position, version) each step builds on
        results = await self.store.save_many(
            [item.session_id for item in items if item.session_id is not None],
            ran.h[:, rows],
            ran.c[:, rows],
            [position + len(item.ids) for (position, _), item in zip(bases, items, strict=True)],
            [version for _, version in bases],
        )
        written = dict(zip(rows, results, strict=True))
        await self._undo_abandoned(live, written)
        return written

    def _answer(self, item: WorkItem, ran: _Ran, i: int, outcome: SessionRecord | EngineError | None) -> None:
        if item.stream is not None:
            self._answer_row(item, item.stream, ran, i, outcome)
            return
        if item.future.done():
            return
        logits = ran.logits[i]
        if item.pieces:  # all_logits over several chunks: (T, V) in order
            logits = np.concatenate([*item.pieces, logits])
        h, c = ran.h[:, i].copy(), ran.c[:, i].copy()
        token, top = ran.tokens.get(i), ran.top.get(i)
        if item.session_id is None:
            position = item.start_position + len(item.ids)
            item.future.set_result(StepResult(logits, position, None, h, c, token, top))
        elif isinstance(outcome, VersionConflict):
            self._conflicted(item, outcome)
        elif isinstance(outcome, EngineError):
            _fail(item, outcome)
        else:
            assert outcome is not None
            item.future.set_result(StepResult(logits, outcome.position, outcome, h, c, token, top))

    def _answer_row(
        self, item: WorkItem, row: StreamRow, ran: _Ran, i: int, outcome: SessionRecord | EngineError | None
    ) -> None:
        """A generation's step: hand its token to the row and queue the row's next step at once."""
        row.item_in_flight = None
        if item.future.done():  # stopped while it ran: nothing was written, or it was undone
            row.settle()
            return
        if isinstance(outcome, VersionConflict):  # written by someone else (another replica) meanwhile
            row.fail(PositionConflict(outcome.session_id, row.position, outcome.actual_position))
        elif isinstance(outcome, EngineError):
            row.fail(outcome)
        else:
            h, c = ran.h[:, i].copy(), ran.c[:, i].copy()  # (L, H): the row's state, and its undo point
            position = row.position + 1 if outcome is None else outcome.position
            row.advance(ran.tokens[i], h, c, position, None if outcome is None else outcome.version)
        self._queue_row(row)

    def _conflicted(self, item: WorkItem, conflict: VersionConflict) -> None:
        """Another writer (a replica sharing the store) changed the session while this step ran. A step that
        stated no expected position is run again on the new state, in order, a bounded number of times; one that
        did is refused, as its client asked."""
        read = item.read
        assert read is not None
        if item.expected_position is None and item.retries < MAX_CONFLICT_RETRIES:
            item.retries += 1
            item.fed, item.carry, item.pieces, item.read = 0, None, [], None
            self._items.appendleft(item)  # first in the next batch: it already waited its turn
            self._wakeup.set()
            return
        if item.expected_position is None:
            _fail(item, PositionConflict(conflict.session_id, None, conflict.actual_position, retries=item.retries))
        else:
            _fail(item, PositionConflict(conflict.session_id, read.position, conflict.actual_position))

    async def _undo_abandoned(
        self,
        live: list[tuple[WorkItem, tuple[np.ndarray, np.ndarray] | None]],
        written: dict[int, SessionRecord | EngineError],
    ) -> None:
        """Put back the states read for steps whose caller gave up while a (remote) store's write was in flight."""
        undo: list[tuple[WorkItem, SessionRecord]] = []  # the step and what it wrote
        for i, outcome in written.items():
            item = live[i][0]
            if item.future.done() and isinstance(outcome, SessionRecord):
                undo.append((item, outcome))
        if not undo:
            return
        origins = [item.origin for item, _ in undo]
        assert all(origin is not None for origin in origins)
        results = await self.store.save_many(
            [new.session_id for _, new in undo],
            np.stack([origin[0] for origin in origins if origin is not None], axis=1),  # (L, n, H)
            np.stack([origin[1] for origin in origins if origin is not None], axis=1),
            [item.base()[0] for item, _ in undo],
            [new.version for _, new in undo],
        )
        for (item, _), result in zip(undo, results, strict=True):
            if item.stream is not None and isinstance(result, SessionRecord):
                item.stream.version = result.version  # the row's last write is now the undo

    async def _load(self, batch: list[WorkItem]) -> list[tuple[WorkItem, tuple[np.ndarray, np.ndarray] | None]]:
        """Read the sessions' states in one call; fail the items that cannot run. -> (item, its h, c or None)."""
        sessions = [item for item in batch if item.session_id is not None and item.carry is None]
        states: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if sessions:
            try:
                loaded = await self.store.load_many([item.session_id for item in sessions if item.session_id])
            except EngineError as exc:  # e.g. StateStoreUnavailable: these items fail, stateless ones run
                for item in sessions:
                    _fail(item, exc)
                sessions = []
            else:
                for j, (item, record) in enumerate(zip(sessions, loaded.records, strict=True)):
                    if isinstance(record, EngineError):
                        _fail(item, record)
                    else:
                        try:
                            check_position(record, item.expected_position)
                        except PositionConflict as exc:
                            _fail(item, exc)
                            continue
                        item.read = record
                        states[id(item)] = item.origin = (loaded.h[:, j], loaded.c[:, j])
        live: list[tuple[WorkItem, tuple[np.ndarray, np.ndarray] | None]] = []
        for item in batch:
            if item.future.done():
                if item.stream is not None:  # stopped while queued
                    item.stream.settle()
                continue
            if item.carry is not None:  # a continuing chunk: the state its previous chunk left
                live.append((item, item.carry))
            elif item.session_id is None:
                live.append((item, item.state))
            else:
                live.append((item, states[id(item)]))
        return live
