"""The engine thread: the batching loop's compute, off the event loop.

One thread owns the loop end to end from the moment a step's state is in hand: collect the queued steps, gather
their states, run ONNX Runtime, post-process the whole batch (sampling, top-k), carry long inputs to their next
chunk and generation rows to their next token, and hand the batch back to the event loop in ONE
`call_soon_threadsafe` (service/engine/batcher.py writes the sessions and answers the callers there). Turns that
carry only stream tokens may wait for a few more turns and go back together, one wake-up for a group of tokens
(`EngineCore._holds`); anything a caller waits on goes at once. The event loop only parses HTTP, reads and writes
the store and writes responses; it never waits for the model, and the engine thread never waits for the event loop:
a generation's next step is queued here, right after its token is drawn.

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

import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.engine.ort import OnnxRuntime
from service.engine.sampling import FEW_ROWS, SamplingBatch, sample, sample_row
from service.engine.streams import RowStep, StreamRow
from service.engine.topk import TokenProb, top_k_rows
from service.engine.work import WorkItem
from service.errors import Draining
from service.metrics import Metrics

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

HOLD_S = 0.005  # stream tokens wait at most this long on the engine thread for company (see `EngineCore._holds`)


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
    out, _, _, hn, cn = _run_model(runtime, rows, h, c, all_logits, metrics)
    return out, hn, cn


Top = tuple[np.ndarray, np.ndarray]  # the next-token graph's answer: probabilities (B, k) float64, ids (B, k) int64


def _run_model(
    runtime: OnnxRuntime,
    rows: Sequence[np.ndarray],
    h: np.ndarray,
    c: np.ndarray,
    all_logits: Sequence[bool],
    metrics: Metrics | None,
    top_k: int = 0,
) -> tuple[list[np.ndarray], np.ndarray | None, Top | None, np.ndarray, np.ndarray]:
    """`staircase`, plus the (B, V) block of every row's last logits when the batch ran as one block (rows of one
    length, none asking for all positions: generation and one-character steps), so post-processing needs no
    re-stacking; and for such a batch, with `top_k` > 0 and the runtime's next-token graph, every row's top_k most
    likely next tokens from the graph itself (service/engine/next_token.py)."""
    length = len(rows[0])
    if not any(all_logits) and all(len(r) == length for r in rows):
        ids = rows[0][None] if len(rows) == 1 else np.concatenate(rows).reshape(len(rows), length)  # (B, T)
        logits, hn, cn, top = _timed_run(runtime, ids, h, c, metrics, top_k if runtime.has_next_token else 0)
        last = logits[:, -1]  # (B, V)
        return list(last), last, top, hn, cn
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    pieces: list[list[np.ndarray]] = [[] for _ in rows]
    done = 0
    for length in np.unique(lens).tolist():  # ascending
        active = np.flatnonzero(lens >= length).tolist()  # rows still running: (b,)
        ids = np.stack([rows[i][done:length] for i in active])  # (b, length - done)
        whole = len(active) == len(rows)
        logits, hn, cn, _ = _timed_run(
            runtime, ids, h if whole else h[:, active], c if whole else c[:, active], metrics
        )
        if whole:  # always so for the first run (every row is at least the shortest): the caller's h, c are
            h, c = hn, cn  # never written; ORT's fresh outputs (L, B, H) are the batch's states from here on
        else:
            h[:, active] = hn  # (L, b, H) scattered back into the batch
            c[:, active] = cn
        for j, i in enumerate(active):
            if all_logits[i]:
                pieces[i].append(logits[j])  # (length - done, V)
            elif lens[i] == length:
                pieces[i].append(logits[j, -1])  # (V,): this row's last position
        done = length
    out = [np.concatenate(p) if all_logits[i] else p[0] for i, p in enumerate(pieces)]
    return out, None, None, h, c


def _timed_run(
    runtime: OnnxRuntime, ids: np.ndarray, h: np.ndarray, c: np.ndarray, metrics: Metrics | None, top_k: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Top | None]:
    """`runtime.run` (or `run_top` with `top_k` > 0), with its wall time and this thread's CPU time in it
    recorded: the gap is waiting, for a core or for the GIL once the run is done."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    top: Top | None = None
    if top_k:
        logits, hn, cn, probs, top_ids = runtime.run_top(ids, h, c, top_k)
        top = probs, top_ids
    else:
        logits, hn, cn = runtime.run(ids, h, c)
    if metrics is not None:
        metrics.inference_cpu.inc(time.thread_time() - cpu0)
        metrics.inference_latency.observe(time.perf_counter() - t0)
    return logits, hn, cn, top


@dataclass(slots=True)
class _Carried:
    """A batch whose every item goes on next turn: if the next batch is the same items in the same order (many
    streams in their steady state), it starts from this one's outputs as they are."""

    items: list[WorkItem]
    h: np.ndarray  # (L, B, H): the batch's ORT outputs, column i the state of items[i]
    c: np.ndarray
    # Every item (a stream's row) drew in one call: with these parameters, these tokens (B,) int64, which are what
    # each row feeds next turn (drawing with the parameters one step on); None otherwise.
    drawn: tuple[SamplingBatch, np.ndarray] | None


@dataclass(slots=True)
class Batch:
    """What the engine thread hands back to the event loop: one per batch turn (several turns of stream tokens may
    go back in one hand-off, in order)."""

    finished: list[WorkItem] = field(default_factory=list)  # ran to the end: write (sessions) and answer
    skipped: list[WorkItem] = field(default_factory=list)  # their callers gave up before they ran
    rows: list[RowStep] = field(default_factory=list)  # generation steps: write, then hand the token out
    released: list[tuple[StreamRow, BaseException | None]] = field(default_factory=list)  # rows let go (why)
    h: np.ndarray | None = None  # (L, B, H): the states after the batch, for the finished session items
    c: np.ndarray | None = None
    index: dict[int, int] = field(default_factory=dict)  # id(finished item or row step) -> its column in h, c
    error: BaseException | None = None  # the batch failed: every item in it fails with this
    made: float = field(default_factory=time.perf_counter)  # when the turn began


class EngineCore:
    """The engine thread and its queue; `put`, `resume` and `stop` are called from the event loop."""

    def __init__(
        self,
        runtime: OnnxRuntime,
        metrics: Metrics,
        deliver: Callable[[list[Batch]], None],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        prefill_chunk: int = 0,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self._deliver = deliver  # called on the engine thread; it must hand the batches to the event loop, in order
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.prefill_chunk = prefill_chunk  # 0: a whole input in one batch turn
        self._lock = threading.Condition()
        self._queue: deque[WorkItem] = deque()
        self._parked: set[StreamRow] = set()
        self._draining = False  # rows are let go at their next turn; other steps still run
        self._stopping = False  # the thread ends once the queue is empty
        self._thread = threading.Thread(target=self._run, name="lstm-serve-engine", daemon=True)
        self._zero = np.zeros((runtime.layers, runtime.hidden), dtype=np.float32)  # a fresh row's h and c
        self._vocab = runtime.vocab_size
        self._chars = runtime.metadata.tokenizer.chars
        self._carried: _Carried | None = None  # see _run_batch
        self._token_counters: dict[str, Counter] = {}  # the tokens counter's child per kind, looked up once
        self.batches = 0
        self.handoffs = 0  # calls of `deliver`

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._thread.start()

    def put(self, items: Sequence[WorkItem], *, front: bool = False) -> None:
        with self._lock:
            if front:
                self._queue.extendleft(reversed(items))
            else:
                self._queue.extend(items)
            self._lock.notify()

    def open(self, row: StreamRow) -> None:
        """A generation's row: its steps are queued here from now on."""
        with self._lock:
            self._queue.append(self._row_item(row))
            self._lock.notify()

    def resume(self, row: StreamRow) -> None:
        """The consumer took tokens (event loop): a row parked on a full window, or stopped while parked, goes
        back in the queue (a stopped one only to be let go, in order, by this thread)."""
        with self._lock:
            if row in self._parked and (not row.window_full or not row.runnable):
                self._parked.discard(row)
                self._queue.append(self._row_item(row))
                self._lock.notify()

    def drain(self) -> None:
        """Let every row go at its next turn (Draining); other steps still run."""
        with self._lock:
            self._draining = True
            for row in self._parked:
                self._queue.append(self._row_item(row))
            self._parked.clear()
            self._lock.notify()

    def stop(self) -> None:
        """End the thread once the queue is empty."""
        with self._lock:
            self._draining = self._stopping = True
            for row in self._parked:
                self._queue.append(self._row_item(row))
            self._parked.clear()
            self._lock.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @staticmethod
    def _row_item(row: StreamRow) -> WorkItem:
        """The row's work item, reused step after step (only this thread touches it). What it feeds next is filled
        in by `_refresh` when a batch needs it: a steady batch (`_run_steady`) reads the row's cursor from the last
        batch's outputs instead."""
        item = row.work
        if item is None:
            item = row.work = WorkItem(
                ids=np.array([row.next_token], dtype=np.int64), session_id=row.session_id, kind="generated"
            )
            item.stream = row
        item.enqueued_at = time.monotonic()  # a batch delay (max_batch_delay_s) counts from the oldest queued step
        return item

    @staticmethod
    def _refresh(item: WorkItem, row: StreamRow) -> None:
        """A row's item with the row's cursor: the token it feeds, its state and its draw."""
        item.ids[0] = row.next_token
        item.sample_next = row.sample_next()
        item.state = (row.h, row.c)
        item.token = None

    # ---- the thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        held: list[Batch] = []  # turns of stream tokens not handed back yet (see `_holds`)
        while True:
            if held and not self._queue:  # about to wait for work: nothing may stay behind
                held = self._hand_back(held)
            out = Batch()
            batch = self._collect(out)
            if batch is None:
                if held:
                    self._hand_back(held)
                return
            if batch:
                try:
                    self._run_batch(batch, out)
                except Exception as exc:  # a bug: fail this batch, keep serving the next ones
                    log.exception("batch of %d failed", len(batch))
                    self._carried = None
                    out.error = exc
                    out.finished = [item for item in batch if item.stream is None]
                    out.released += [(item.stream, exc) for item in batch if item.stream is not None]
                    out.rows = []
            if not (out.finished or out.skipped or out.rows or out.released or out.error):
                continue
            held.append(out)
            if not self._holds(held):
                held = self._hand_back(held)

    def _hand_back(self, batches: list[Batch]) -> list[Batch]:
        """Hand `batches` to the event loop in one wake-up; the new, empty list of held turns."""
        self.handoffs += 1
        self._deliver(batches)
        return []

    def _holds(self, held: list[Batch]) -> bool:
        """Whether the turns in `held` may wait for the next turn before going back to the event loop: only when
        they carry nothing but stream tokens, none a stream's first or last, fewer than every stream's group size
        (streams.Grouping: the consumer takes tokens in such groups anyway; a stream handed out token by token is
        never held), the oldest turn begun less than HOLD_S ago. Each hand-back wakes the event loop: with one
        stream, 33 us of this thread's time a token for `call_soon_threadsafe` alone."""
        out = held[-1]
        if out.finished or out.skipped or out.released or out.error:
            return False
        tokens = sum(len(turn.rows) for turn in held)
        for step in out.rows:
            if step.finish is not None or step.row.computed == 1 or tokens >= step.row.group_tokens:
                return False
        return time.perf_counter() - held[0].made < HOLD_S

    def _collect(self, out: Batch) -> list[WorkItem] | None:
        """The next batch (None once stopping with nothing left); rows that must be let go go to `out`."""
        with self._lock:
            while not self._queue:
                if self._stopping:
                    return None
                self._lock.wait()
            if self.max_batch_delay_s > 0:
                deadline = self._queue[0].enqueued_at + self.max_batch_delay_s
                while len(self._queue) < self.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
            batch: list[WorkItem] = []
            deferred: list[WorkItem] = []
            sessions: set[str] = set()
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                row = item.stream
                if row is not None:
                    if not row.runnable or self._draining:
                        out.released.append((row, Draining() if row.runnable else None))
                        continue
                elif item.future.done():  # its caller gave up before it ran: skip it, nothing is applied
                    out.skipped.append(item)
                    continue
                if item.session_id is not None:
                    if item.session_id in sessions:  # never two steps of one session in a batch
                        deferred.append(item)
                        continue
                    sessions.add(item.session_id)
                batch.append(item)
            self._queue.extendleft(reversed(deferred))  # they go first next time, in their arrival order
            return batch

    def _chunk(self, item: WorkItem) -> np.ndarray:
        """The part of the item's input this batch turn feeds: all that is left, or the next prefill chunk."""
        end = len(item.ids) if not self.prefill_chunk else item.fed + self.prefill_chunk
        return item.ids[item.fed : end]

    def _run_batch(self, batch: list[WorkItem], out: Batch) -> None:
        started = time.monotonic()
        for item in batch:
            # A continuing chunk waited behind the others on purpose; a stream's steps are queued by this thread
            # right after its last one (64 observations a batch with 64 streams, and nothing a caller waited on).
            if not item.fed and item.stream is None:
                self.metrics.queue_wait.observe(started - item.enqueued_at)
        self.batches += 1
        self.metrics.batch_size.observe(len(batch))
        carried = self._carried_into(batch)
        if carried is not None and carried.drawn is not None:
            draws, tokens = carried.drawn
            self._run_steady(batch, carried.h, carried.c, draws.advanced(), tokens, out)
            return
        for item in batch:
            if item.stream is not None:
                self._refresh(item, item.stream)
        h, c = self._states(batch, carried)
        rows = [self._chunk(item) for item in batch]
        final = [item.fed + len(row) == len(item.ids) for item, row in zip(batch, rows, strict=True)]
        all_logits = [item.all_logits for item in batch]
        top_k = min(max((item.top_k for item, f in zip(batch, final, strict=True) if f), default=0), self._vocab)
        logits, block, top, hn, cn = _run_model(self.runtime, rows, h, c, all_logits, self.metrics, top_k)
        self._count_tokens(batch, rows)
        drawn = self._post_process(batch, final, logits, block, top)
        out.h, out.c = hn, cn
        # Every carried state below is a column view (L, H) of this batch's fresh ORT outputs hn, cn (L, B, H),
        # which nothing writes afterwards: no per-row copies. The commit writes the columns it needs in one
        # gather (all of hn, cn when every row is written), and a batch of the same rows next turn runs from
        # hn, cn as they are (`_states`).
        again: list[WorkItem] = []
        for i, item in enumerate(batch):
            row = item.stream
            if row is not None:
                assert item.token is not None
                step = row.step_done(item.token, hn[:, i], cn[:, i])  # its next input and undo point
                out.index[id(step)] = i
                out.rows.append(step)
                again.append(item)
            elif not final[i]:
                item.fed += len(rows[i])
                item.state = (hn[:, i], cn[:, i])  # (L, H) each: where the next chunk starts
                if item.all_logits:
                    item.pieces.append(logits[i])
                again.append(item)
            else:
                item.logits = np.concatenate([*item.pieces, logits[i]]) if item.pieces else logits[i]
                out.index[id(item)] = i
                out.finished.append(item)
        self._requeue(again, out)
        # The same rows in the same order next turn (streams in their steady state) run from hn, cn directly.
        self._carried = _Carried(batch, hn, cn, drawn) if len(again) == len(batch) else None

    def _run_steady(
        self,
        batch: list[WorkItem],
        h: np.ndarray,
        c: np.ndarray,
        draws: SamplingBatch,
        ids: np.ndarray,
        out: Batch,
    ) -> None:
        """Many streams in their steady state: the same rows as last turn, in its order, each feeding the token it
        drew then. Every input is that turn's output as it is: the drawn tokens `ids` (B,), the states h, c
        (L, B, H), the sampling parameters one step on (`draws`); nothing is gathered or rebuilt per row."""
        logits, hn, cn, _ = _timed_run(self.runtime, ids[:, None], h, c, self.metrics)  # (B, 1, V), (L, B, H) x2
        self._count(batch[0].kind, len(batch))
        tokens = sample(logits[:, -1], draws)  # (B,)
        out.h, out.c = hn, cn
        for i, (item, token) in enumerate(zip(batch, tokens.tolist(), strict=True)):
            row = item.stream
            assert row is not None
            item.token = token
            step = row.step_done(token, hn[:, i], cn[:, i])
            out.index[id(step)] = i
            out.rows.append(step)
        self._requeue(batch, out)
        self._carried = _Carried(batch, hn, cn, (draws, tokens))

    def _requeue(self, again: list[WorkItem], out: Batch) -> None:
        """Continuing chunks go behind what waits now (fair to the others); rows queue their next step, park on a
        full window, or are let go when they have ended or stopped."""
        if not again:
            return
        with self._lock:  # no notify: this thread is the only one that waits on the queue
            for item in again:
                row = item.stream
                if row is None:
                    self._queue.append(item)
                elif row.cursor_ended or not row.runnable or self._draining:
                    out.released.append((row, Draining() if self._draining and not row.cursor_ended else None))
                elif row.window_full:
                    self._parked.add(row)
                else:
                    self._queue.append(self._row_item(row))

    def _count_tokens(self, batch: list[WorkItem], rows: list[np.ndarray]) -> None:
        fed: dict[str, int] = {}
        for item, row in zip(batch, rows, strict=True):  # one counter update per kind, not one lookup per row
            fed[item.kind] = fed.get(item.kind, 0) + len(row)
        for kind, count in fed.items():
            self._count(kind, count)

    def _count(self, kind: str, count: int) -> None:
        counter = self._token_counters.get(kind)
        if counter is None:
            counter = self._token_counters[kind] = self.metrics.tokens.labels(kind)
        counter.inc(count)

    def _carried_into(self, batch: list[WorkItem]) -> _Carried | None:
        """The last batch, when this one is its items in its order, each carried on from it."""
        carried = self._carried
        if carried is not None and len(carried.items) == len(batch) and all(map(operator.is_, carried.items, batch)):
            return carried
        return None

    def _states(self, batch: list[WorkItem], carried: _Carried | None) -> tuple[np.ndarray, np.ndarray]:
        """The batch's input states h, c (L, B, H); a fresh row starts from zeros."""
        if len(batch) == 1 and batch[0].state is not None:
            h1, c1 = batch[0].state
            return h1[:, None], c1[:, None]  # (L, 1, H) views: nothing to gather for one row
        if carried is not None:  # item i's state is column i of the last batch's outputs: what ORT needs as it is
            return carried.h, carried.c
        zero = self._zero
        h = np.stack([zero if item.state is None else item.state[0] for item in batch], axis=1)
        c = np.stack([zero if item.state is None else item.state[1] for item in batch], axis=1)
        return h, c

    def _post_process(
        self,
        batch: list[WorkItem],
        final: list[bool],
        logits: list[np.ndarray],
        block: np.ndarray | None,
        top: Top | None,
    ) -> tuple[SamplingBatch, np.ndarray] | None:
        """Sampling and top-k for every finishing row, in one call each over the batch (`block`: every row's last
        logits (B, V) when the batch ran as one block; `top`: the graph's top-k of every row, when it ran the
        next-token graph). Returns the sampling parameters and the tokens (B,) when every row drew with them in one
        call, for the next turn of the same rows."""
        drawing = [i for i, item in enumerate(batch) if final[i] and item.sample_next is not None]
        drawn: tuple[SamplingBatch, np.ndarray] | None = None
        if 0 < len(drawing) <= FEW_ROWS:  # per row, no parameter arrays to build
            for i in drawing:
                d = batch[i].sample_next
                assert d is not None
                x = logits[i] if logits[i].ndim == 1 else logits[i][-1]
                batch[i].token = sample_row(x, d.temperature, d.top_k, d.top_p, d.seed, d.index)
        elif drawing:
            params = self._draws(batch, drawing)
            if block is not None and len(drawing) == len(batch):
                last = block  # (B, V): every row draws
            else:
                last = np.stack([logits[i] if logits[i].ndim == 1 else logits[i][-1] for i in drawing])  # (n, V)
            tokens = sample(last, params)
            for i, token in zip(drawing, tokens.tolist(), strict=True):
                batch[i].token = token
            drawn = (params, tokens)
        asking = [i for i, item in enumerate(batch) if final[i] and item.top_k > 0]
        if asking and top is not None:
            self._top_from_graph(batch, asking, top)
        elif asking:
            if block is not None and len(asking) == len(batch):
                last = block  # (B, V): every row asks (a batch of one-character predicts)
            else:
                last = np.stack([logits[i] if logits[i].ndim == 1 else logits[i][-1] for i in asking])  # (n, V)
            ks = [batch[i].top_k for i in asking]
            for i, top_i in zip(asking, top_k_rows(last, ks, self.runtime.metadata.tokenizer), strict=True):
                batch[i].top = top_i
        return drawn if len(drawing) == len(batch) else None

    def _top_from_graph(self, batch: list[WorkItem], asking: list[int], top: Top) -> None:
        """Each asking row's top-k from the graph's (B, k) answer: one conversion to Python values for the batch."""
        probs, ids = top if len(asking) == len(batch) else (top[0][asking], top[1][asking])  # (n, k) each
        chars = self._chars
        for i, row_p, row_ids in zip(asking, probs.tolist(), ids.tolist(), strict=True):
            n = min(batch[i].top_k, self._vocab)
            batch[i].top = [TokenProb(chars[t], t, p) for t, p in zip(row_ids[:n], row_p[:n], strict=True)]

    @staticmethod
    def _draws(batch: list[WorkItem], drawing: list[int]) -> SamplingBatch:
        """The drawing rows' sampling parameters, as arrays."""
        draws = [batch[i].sample_next for i in drawing]
        return SamplingBatch.from_rows(
            [d.temperature for d in draws if d is not None],
            [d.top_k for d in draws if d is not None],
            [d.top_p for d in draws if d is not None],
            [d.seed for d in draws if d is not None],
            [d.index for d in draws if d is not None],
        )
