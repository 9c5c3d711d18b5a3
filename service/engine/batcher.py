"""Dynamic batching, the engine's private core: work items of different sessions share ONNX Runtime runs.

Only the Engine (service/engine/engine.py) creates and drives the Batcher; every feature reaches it through the
Engine's public methods.

A work item is a generic *step*: feed some token ids to one session (or to a stateless row that brings its own
state or starts from zeros) and return the logits of the last position or of all positions. Prompts,
predictions and generation rows (one token per step per stream) share the same queue, so many streams advance
together in shared batches.

Three stages, two threads:
1. intake (event loop): session steps have their states read with ONE `load_many` for all that are waiting; a
   session with a step in flight holds its later steps back until that one is written, so steps of one session
   run in arrival order, each on the state the previous one wrote;
2. the engine thread (service/engine/core.py): batches, runs ONNX Runtime, samples, carries chunks and
   generation rows on, and hands each batch back in one `call_soon_threadsafe`;
3. commit (event loop): ONE `save_many` writes the batch's sessions, compare-and-set on the version each step
   read, then the callers are answered and the generation tokens handed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from service.engine.core import Batch, EngineCore, staircase
from service.engine.ort import OnnxRuntime
from service.engine.steps import StepResult, check_position
from service.engine.streams import RowStep, StreamRow
from service.engine.work import WorkItem
from service.errors import Draining, EngineError, PositionConflict, VersionConflict
from service.metrics import Metrics
from service.state.store import SessionRecord, StateStore

__all__ = ["MAX_CONFLICT_RETRIES", "Batcher", "WorkItem", "staircase"]

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 32  # a step without expected_position, re-run after other writers changed its session:
# each conflict means another writer committed a step, so a step loses only while others keep winning


def _fail(item: WorkItem, exc: BaseException) -> None:
    if not item.future.done():  # a caller that was cancelled has nobody to tell
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
        self.store = store
        self.metrics = metrics
        self._core = EngineCore(
            runtime,
            metrics,
            self._from_engine_thread,
            max_batch_size=max_batch_size,
            max_batch_delay_s=max_batch_delay_s,
            prefill_chunk=prefill_chunk,
        )
        self._pending: deque[WorkItem] = deque()  # session steps waiting for their state to be read
        self._busy: set[str] = set()  # sessions with a step read, running or being written
        self._intake_wake = asyncio.Event()
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._outstanding = 0  # submitted steps not answered yet
        self._settled = asyncio.Event()
        self._closing = False
        self._finished = False  # every submitted step is answered and nothing more comes: the intake ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def batches(self) -> int:
        return self._core.batches

    @property
    def handoffs(self) -> int:
        return self._core.handoffs

    @property
    def queued(self) -> int:
        return len(self._pending) + self._core.queued

    def start(self) -> None:
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._core.start()
        self._tasks = [
            self._loop.create_task(self._intake(), name="lstm-serve-intake"),
            self._loop.create_task(self._commit_loop(), name="lstm-serve-commit"),
        ]

    async def stop(self) -> None:
        """Accept nothing new, finish every submitted step (generation rows end with Draining), then stop."""
        self._closing = True
        self._core.drain()
        self._intake_wake.set()
        if not self._tasks:
            return
        while self._outstanding:
            self._settled.clear()
            await self._settled.wait()
        self._finished = True
        self._intake_wake.set()
        self._core.stop()
        await asyncio.to_thread(self._core.join)
        self._batches.put_nowait(None)  # after every batch the thread handed over
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def submit(self, item: WorkItem) -> StepResult:
        if self._closing:
            raise Draining()
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        item.enqueued_at = time.monotonic()
        self._outstanding += 1
        try:
            if item.session_id is None:
                self._core.put([item])
            else:
                self._pending.append(item)
                self._intake_wake.set()
            result = await item.future
        finally:
            self._outstanding -= 1
            if not self._outstanding:
                self._settled.set()
        assert isinstance(result, StepResult)
        return result

    def open_stream(self, row: StreamRow) -> None:
        """Start a generation's persistent row: from now on the engine thread queues its steps itself."""
        if self._closing:
            raise Draining()
        row.claim()
        row.resume = self._core.resume
        self._core.open(row)

    async def stop_stream(self, row: StreamRow) -> None:
        """Stop a row and wait until the engine has let go of it: nothing of it is queued, running or being
        written afterwards, so its version is final."""
        row.stopped = True
        if not self._tasks:  # no engine left to reach it
            row.settle()
        self._core.resume(row)  # a row parked on a full window is let go by the thread, in order
        await row.idle()

    # ---- 1. intake -------------------------------------------------------------------------------------------
    async def _intake(self) -> None:
        while True:
            ready = self._loadable()
            if not ready:
                if self._finished:
                    return
                self._intake_wake.clear()
                await self._intake_wake.wait()
                continue
            try:
                loaded = await self._load(ready)
            except Exception as exc:  # a bug or a broken store: these steps fail, the next ones are tried
                log.exception("reading %d sessions failed", len(ready))
                for item in ready:
                    self._done_with(item)
                    _fail(item, exc)
                continue
            if loaded:
                self._core.put(loaded)

    def _loadable(self) -> list[WorkItem]:
        """The waiting steps whose sessions have nothing in flight, the first of each session, in order."""
        ready: list[WorkItem] = []
        held: deque[WorkItem] = deque()
        taken: set[str] = set()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():
                continue
            sid = item.session_id
            assert sid is not None
            if sid in self._busy or sid in taken:
                held.append(item)
                continue
            taken.add(sid)
            ready.append(item)
        self._pending = held
        self._busy |= taken
        return ready

    async def _load(self, items: list[WorkItem]) -> list[WorkItem]:
        """Read the sessions' states in one call; fail the items that cannot run."""
        try:
            loaded = await self.store.load_many([item.session_id for item in items if item.session_id])
        except EngineError as exc:  # e.g. StateStoreUnavailable: these items fail
            for item in items:
                self._done_with(item)
                _fail(item, exc)
            return []
        out: list[WorkItem] = []
        for j, (item, record) in enumerate(zip(items, loaded.records, strict=True)):
            if isinstance(record, EngineError):
                self._done_with(item)
                _fail(item, record)
                continue
            try:
                check_position(record, item.expected_position)
            except PositionConflict as exc:
                self._done_with(item)
                _fail(item, exc)
                continue
            if item.future.done():
                self._done_with(item)
                continue
            item.read = record
            item.state = item.origin = (loaded.h[:, j], loaded.c[:, j])  # (L, H) each
            out.append(item)
        return out

    def _done_with(self, item: WorkItem) -> None:
        """The session's step is finished with: its next one may be read."""
        if item.session_id is not None and item.stream is None:
            self._busy.discard(item.session_id)
            if self._pending:
                self._intake_wake.set()

    # ---- 3. commit -------------------------------------------------------------------------------------------
    def _from_engine_thread(self, batches: list[Batch]) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._take_batches, batches)

    def _take_batches(self, batches: list[Batch]) -> None:
        for batch in batches:
            self._batches.put_nowait(batch)

    async def _commit_loop(self) -> None:
        while (batch := await self._batches.get()) is not None:
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug or a broken store: fail this batch, keep serving the next ones
                log.exception("writing a batch failed")
                for item in batch.finished:
                    self._done_with(item)
                    _fail(item, exc)
                for step in batch.rows:
                    step.row.fail(exc)
            finally:
                for row, why in batch.released:
                    if why is not None:
                        row.fail(why)
                    row.settle()

    async def _commit(self, batch: Batch) -> None:
        for item in batch.skipped:
            self._done_with(item)
        if batch.error is not None:
            for item in batch.finished:
                self._done_with(item)
                _fail(item, batch.error)
            return
        written = await self._write(batch)
        for item in batch.finished:
            self._answer(item, batch, written.get(id(item)))
        for step in batch.rows:
            self._hand_out(step, written.get(id(step)))

    async def _write(self, batch: Batch) -> dict[int, SessionRecord | EngineError]:
        """Write the batch's finished session steps and generation steps in one compare-and-set call."""
        items = [i for i in batch.finished if i.session_id is not None and not i.future.done()]
        steps = [s for s in batch.rows if s.row.session_id is not None and s.row.runnable]
        if not items and not steps:
            return {}
        h, c = self._written_states(batch, items, steps)  # (L, n, H) each
        ids: list[str] = []
        positions: list[int] = []
        versions: list[int] = []
        for item in items:
            position, version = item.base()
            ids.append(item.session_id or "")
            positions.append(position + len(item.ids))
            versions.append(version)
        for step in steps:
            row_version = step.row.version
            assert row_version is not None  # a session's row always holds the version it last wrote
            ids.append(step.row.session_id or "")
            positions.append(step.row.position + 1)
            versions.append(row_version)
        results = await self.store.save_many(ids, h, c, positions, versions)
        keys = [id(item) for item in items] + [id(step) for step in steps]
        written = dict(zip(keys, results, strict=True))
        await self._undo_abandoned(items, written)
        return written

    @staticmethod
    def _written_states(batch: Batch, items: list[WorkItem], steps: list[RowStep]) -> tuple[np.ndarray, np.ndarray]:
        """h, c (L, n, H) of the finished items, then of the generation steps, in that order: the batch's own
        outputs when that is every column in order (streams in their steady state), else one gather."""
        assert batch.h is not None and batch.c is not None
        cols = [batch.index[id(item)] for item in items] + [batch.index[id(step)] for step in steps]
        if len(cols) == batch.h.shape[1] and cols == list(range(len(cols))):
            return batch.h, batch.c
        return batch.h[:, cols], batch.c[:, cols]

    async def _undo_abandoned(self, items: Sequence[WorkItem], written: dict[int, SessionRecord | EngineError]) -> None:
        """Put back the states read for steps whose caller gave up while a (remote) store's write was in flight."""
        undo = [(i, new) for i in items if i.future.done() and isinstance(new := written[id(i)], SessionRecord)]
        if not undo:
            return
        origins = [item.origin for item, _ in undo]
        await self.store.save_many(
            [new.session_id for _, new in undo],
            np.stack([o[0] for o in origins if o is not None], axis=1),  # (L, n, H)
            np.stack([o[1] for o in origins if o is not None], axis=1),
            [item.base()[0] for item, _ in undo],
            [new.version for _, new in undo],
        )

    def _answer(self, item: WorkItem, batch: Batch, outcome: SessionRecord | EngineError | None) -> None:
        if item.future.done():
            self._done_with(item)
            return
        assert item.logits is not None and batch.h is not None and batch.c is not None
        col = batch.index[id(item)]
        h, c = batch.h[:, col], batch.c[:, col]  # (L, H) views of the batch's outputs, which nothing writes again
        if item.session_id is None:
            position = item.start_position + len(item.ids)
            item.future.set_result(StepResult(item.logits, position, None, h, c, item.token, item.top))
            return
        if isinstance(outcome, VersionConflict):
            self._conflicted(item, outcome)
            return
        self._done_with(item)
        if isinstance(outcome, EngineError):
            _fail(item, outcome)
        else:
            assert outcome is not None
            item.future.set_result(StepResult(item.logits, outcome.position, outcome, h, c, item.token, item.top))

    def _hand_out(self, step: RowStep, outcome: SessionRecord | EngineError | None) -> None:
        """A generation step: the token goes to its row once written (stopped rows write and get nothing)."""
        row = step.row
        if not row.runnable:
            if isinstance(outcome, SessionRecord):  # stopped while a (remote) write was in flight: it landed, so
                row.position, row.version = outcome.position, outcome.version  # the rollback compares on it
            return
        if isinstance(outcome, VersionConflict):  # written by someone else (another replica) meanwhile
            row.fail(PositionConflict(outcome.session_id, row.position, outcome.actual_position))
        elif isinstance(outcome, EngineError):
            row.fail(outcome)
        elif outcome is None:
            row.advance(step, row.position + 1, None)
        else:
            row.advance(step, outcome.position, outcome.version)

    def _conflicted(self, item: WorkItem, conflict: VersionConflict) -> None:
        """Another writer (a replica sharing the store) changed the session while this step ran. A step that
        stated no expected position is run again on the new state, in order, a bounded number of times; one that
        did is refused, as its client asked."""
        read = item.read
        assert read is not None
        self._busy.discard(conflict.session_id)
        if item.expected_position is None and item.retries < MAX_CONFLICT_RETRIES:
            item.retries += 1
            item.reset()
            self._pending.appendleft(item)  # first in the next read: it already waited its turn
            self._intake_wake.set()
            return
        if self._pending:
            self._intake_wake.set()
        if item.expected_position is None:
            _fail(item, PositionConflict(conflict.session_id, None, conflict.actual_position, retries=item.retries))
        else:
            _fail(item, PositionConflict(conflict.session_id, read.position, conflict.actual_position))
