"""The Engine: the only door to the model. Routes, generation, inspection and V2 sequences use its public methods.

The whole surface:
- lifecycle: `start(runtime, store)`, `drain()`, `begin_shutdown()`, `ready`, `draining`, `store_available`;
- description: `config`, `model` (typed facts of the loaded model), `session_stats()`, `stats()`;
- input: `tokenize(text, tokens)` -- the one place "text or tokens" and the length limit are checked;
- steps: `step(ids, ...)` (stateless, or one step of a session under its lock) and `session(id)`, an async
  context manager holding the session's lock for several reads and steps (a generation, an inspection);
- sessions: `create_session`, `get_session`, `session_predict`, `fork_session`, `reset_session`, `delete_session`,
  `export_state` (import is `create_session(state=...)`); `predict` for the stateless route;
- `head_logits(h)`: the output layer on a stored state (a generation that continues without a prompt);
- `open_stream(row)` / `stop_stream(row)`: a generation's persistent row, stepped by the engine thread itself.

Every request to a session holds that session's lock from before it is queued until its answer is back, so a
session's requests run strictly one after another in arrival order and never share a batch. Input is validated
before anything is queued, and a step's write is compare-and-set on the version it read, so a request that fails
changes nothing. The batcher, the store, the locks and the runtime are private: the composition root
(service/app.py) builds the runtime and the store and hands them to `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.onnx_meta import ModelMetadata
from model.tokenizer import InvalidTokenIdError, UnknownCharacterError
from service.engine.batcher import Batcher, WorkItem
from service.engine.config import EngineConfig
from service.engine.head import Head
from service.engine.keyed_locks import KeyedLocks
from service.engine.ort import OnnxRuntime
from service.engine.state_io import PortableState, export_state, import_state
from service.engine.steps import SampleNext, StatelessRow, StepResult, TokenKind, check_position
from service.engine.streams import StreamRow
from service.engine.topk import TokenProb
from service.errors import Draining, EngineError, InvalidInput, InvalidToken, NotReady
from service.metrics import Metrics
from service.session_ids import owner_of
from service.state.store import EvictionReason, SessionRecord, StateStore

log = logging.getLogger(__name__)

WARMUP_TEXT = "To be, or not to be, that is the question:\n"


@dataclass(frozen=True, slots=True)
class Prediction:
    next: list[TokenProb]
    position: int


@dataclass(frozen=True, slots=True)
class SessionPrediction:
    record: SessionRecord
    next: list[TokenProb]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the engine serves: the artifact's metadata, where it came from, and what runs it."""

    metadata: ModelMetadata
    path: Path
    provider: str  # "cpu" or "cuda"

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of one session's h (and of its C): (layers, hidden)."""
        return (self.metadata.config.num_layers, self.metadata.config.hidden_size)

    @property
    def state_bytes(self) -> int:
        layers, hidden = self.state_shape
        return 2 * layers * hidden * 4


@dataclass(frozen=True, slots=True)
class SessionStats:
    active: int
    evicted: Mapping[EvictionReason, int]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters of the engine's core, for tests and the benchmark."""

    batches: int  # batches run so far
    model_runs: int  # ONNX Runtime calls so far (a batch of rows of several lengths makes several)
    queued: int  # work items waiting for a batch
    busy_sessions: int  # sessions (and sequence keys) with a request holding or waiting for their lock
    handoffs: int  # times the engine thread handed batches back to the event loop (one wake-up each)


class SessionLease:
    """A session held under its lock (`async with engine.session(id) as lease`): reads and steps in order."""

    def __init__(self, engine: Engine, session_id: str) -> None:
        self._engine = engine
        self.session_id = session_id

    async def read(self, expected_position: int | None = None) -> tuple[SessionRecord, np.ndarray, np.ndarray]:
        """The record and copies of h and c, each (layers, hidden); PositionConflict if not at the position."""
        record, h, c = await self._engine._require_store().get_state(self.session_id)
        check_position(record, expected_position)
        return record, h, c

    async def step(
        self,
        ids: np.ndarray,
        *,
        expected_position: int | None = None,
        sample_next: SampleNext | None = None,
        kind: TokenKind = "prompt",
        all_logits: bool = False,
        top_k: int = 0,
    ) -> StepResult:
        """Feed ids (T,) to the session in a shared batch; its state advances only if the step succeeds. With
        `top_k`, the result carries the most likely next tokens (computed for the whole batch at once)."""
        item = WorkItem(
            ids=ids,
            session_id=self.session_id,
            expected_position=expected_position,
            sample_next=sample_next,
            kind=kind,
            all_logits=all_logits,
            top_k=top_k,
        )
        return await self._engine._submit(item)

    async def restore(self, h: np.ndarray, c: np.ndarray, position: int, version: int) -> bool:
        """Put h, c (layers, hidden) and the position back, only if the session is still at `version` (our own
        last write); False, and nothing changed, if anything else wrote to it since."""
        results = await self._engine._require_store().save_many(
            [self.session_id], h[:, None], c[:, None], [position], [version]
        )
        if isinstance(results[0], EngineError):
            log.warning(
                "could not restore a session", extra={"session_id": self.session_id, "error": results[0].message}
            )
            return False
        return True


class Engine:
    def __init__(self, config: EngineConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._runtime: OnnxRuntime | None = None
        self._store: StateStore | None = None
        self._batcher: Batcher | None = None
        self._head: Head | None = None
        self._head_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._locks = KeyedLocks()
        self._ready = False
        self._draining = False
        self._stopping = False  # SIGTERM received: no new sessions or streams, readiness false

    # ---- lifecycle ---------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once the model is loaded and warm, until draining (or the shutdown that precedes it) starts."""
        return self._ready and not self._draining and not self._stopping

    @property
    def draining(self) -> bool:
        return self._draining or self._stopping

    @property
    def store_available(self) -> bool:
        """False while a remote state store cannot be reached (readiness reports it)."""
        return self._store is None or self._store.available

    def begin_shutdown(self) -> None:
        """SIGTERM: readiness false at once, new sessions and streams refused (503 draining); requests already
        running, and requests to existing sessions, are still served until the lifespan drains the engine.
        Synchronous and idempotent: called from a signal handler."""
        if self._stopping:
            return
        self._stopping = True
        self.metrics.ready.set(0)
        log.info("shutdown requested: readiness false, refusing new sessions and streams")

    def check_serving(self) -> None:
        """Raise Draining or NotReady unless the engine takes work."""
        if self._draining:
            raise Draining()
        if not self._ready:
            raise NotReady()

    def check_accepting_new(self) -> None:
        """Raise Draining once shutdown started; for work that would outlive it (new sessions, streams)."""
        self.check_serving()
        if self._stopping:
            raise Draining()

    async def start(self, runtime: OnnxRuntime, store: StateStore) -> None:
        """Take the loaded runtime and the (restored) store, start the batcher and the sweeper, warm up."""
        self._runtime, self._store = runtime, store
        store.add_eviction_listener(self._on_evicted)
        await store.start()
        with contextlib.suppress(EngineError):  # a remote store may be down at start: the sweeper reconciles later
            self.metrics.active_sessions.set(await store.count())  # sessions restored from a snapshot count
        cfg = self.config
        self._batcher = Batcher(
            runtime,
            store,
            self.metrics,
            max_batch_size=cfg.max_batch_size,
            max_batch_delay_s=cfg.max_batch_delay_s,
            prefill_chunk=cfg.prefill_chunk_tokens,
        )
        self._batcher.start()
        try:
            await self._warm_up(runtime)
        except BaseException:
            await self._batcher.stop()  # no engine thread left behind by a failed start
            raise
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="lstm-serve-sweeper")
        meta = runtime.metadata
        self.metrics.model_info.labels(meta.name, meta.version, meta.fingerprint, runtime.provider).set(1)
        self._ready = True
        self.metrics.ready.set(1)
        log.info(
            "model ready",
            extra={
                "model": meta.name,
                "version": meta.version,
                "provider": runtime.provider,
                "fingerprint": meta.fingerprint,
                "path": str(runtime.path),
                "max_batch_size": cfg.max_batch_size,
                "max_batch_delay_ms": cfg.max_batch_delay_s * 1000,
            },
        )

    async def _warm_up(self, runtime: OnnxRuntime) -> None:
        """Run the shapes serving will see (a prompt, a full batch of single tokens) so that ONNX Runtime has
        allocated and optimised before the first client waits on it; check the outputs are sane."""
        layers, hidden, batch = runtime.layers, runtime.hidden, self.config.max_batch_size

        def shapes() -> None:
            for b, t in ((1, 1), (batch, 1), (1, 16)):
                zeros = np.zeros((layers, b, hidden), dtype=np.float32)  # (L, B, H)
                logits, hn, _ = runtime.run(np.zeros((b, t), dtype=np.int64), zeros, zeros)
                if logits.shape != (b, t, runtime.vocab_size) or hn.shape != zeros.shape:
                    raise RuntimeError(f"model returned logits {logits.shape}, hn {hn.shape} for input ({b}, {t})")
                if not np.isfinite(logits).all():
                    raise RuntimeError("model returned non-finite logits during warm-up")

        await asyncio.to_thread(shapes)
        # And once through the batcher and its engine thread.
        tok = runtime.metadata.tokenizer
        text = "".join(ch for ch in WARMUP_TEXT if ch in tok.chars) or tok.chars[0]
        await self._submit(WorkItem(ids=tok.encode(text)))

    async def _sweep_loop(self) -> None:
        store = self._require_store()
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await store.sweep_expired()
                # Reconcile the gauge with the store's own count (a shared store changes under other servers).
                self.metrics.active_sessions.set(await store.count())
            except Exception:  # a remote store may fail now and then; the next sweep tries again
                log.exception("sweeping expired sessions failed")

    async def drain(self) -> None:
        """Stop accepting work, finish everything queued, stop the batcher and the sweeper. The store stays open:
        its owner (the composition root) snapshots and closes it after this."""
        if self._draining:
            return
        self._draining = True
        self.metrics.ready.set(0)
        log.info("draining")
        if self._batcher is not None:
            await self._batcher.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        log.info("engine drained: every queued step ran")

    def _on_evicted(self, reason: str, count: int) -> None:
        # Every removal, whatever its cause (lazy expiry on access included), passes through here.
        self.metrics.sessions_evicted.labels(reason).inc(count)
        self.metrics.active_sessions.dec(count)

    # ---- private access to the core ----------------------------------------------------------------------
    def _require_store(self) -> StateStore:
        if self._store is None:
            raise NotReady()
        return self._store

    def _require_runtime(self) -> OnnxRuntime:
        if self._runtime is None:
            raise NotReady()
        return self._runtime

    async def _submit(self, item: WorkItem) -> StepResult:
        if self._batcher is None:
            raise NotReady()
        return await self._batcher.submit(item)

    def open_stream(self, row: StreamRow) -> None:
        """Hand a generation's row to the batcher, which then runs its steps one after another by itself (a
        session's row must be opened and stopped under that session's lease)."""
        if self._batcher is None:
            raise NotReady()
        self._batcher.open_stream(row)

    async def stop_stream(self, row: StreamRow) -> None:
        """Stop a row; on return nothing of it is queued, running or being written."""
        if self._batcher is None:
            row.settle()
            return
        await self._batcher.stop_stream(row)

    # ---- description -------------------------------------------------------------------------------------
    @property
    def model(self) -> ModelInfo:
        runtime = self._require_runtime()
        return ModelInfo(metadata=runtime.metadata, path=runtime.path, provider=runtime.provider)

    async def session_stats(self) -> SessionStats:
        store = self._require_store()
        return SessionStats(active=await store.count(), evicted=store.evictions)

    def stats(self) -> EngineStats:
        runtime, batcher = self._runtime, self._batcher
        return EngineStats(
            batches=0 if batcher is None else batcher.batches,
            model_runs=0 if runtime is None else runtime.runs,
            queued=0 if batcher is None else batcher.queued,
            busy_sessions=len(self._locks),
            handoffs=0 if batcher is None else batcher.handoffs,
        )

    # ---- input -------------------------------------------------------------------------------------------
    def tokenize(self, text: str | None, tokens: Sequence[int] | None, *, required: bool = True) -> np.ndarray | None:
        """Text or token ids -> (T,) int64, T >= 1; None when neither is given and the input is optional.

        The one place the rule "text or tokens, not both" and the text-length limit are checked, for every route
        (JSON, WebSocket and V2 alike). Raises InvalidInput / InvalidToken naming what is wrong.
        """
        if text is not None and tokens is not None:
            raise InvalidInput("give either 'text' or 'tokens', not both")
        if text is None and tokens is None:
            if required:
                raise InvalidInput("give 'text' or 'tokens'")
            return None
        limit = self.config.max_text_length
        tokenizer = self.model.metadata.tokenizer
        if text is not None:
            if len(text) > limit:
                raise InvalidInput(f"text has {len(text)} characters; the limit is {limit}", code="text_too_long")
            try:
                ids = tokenizer.encode(text)
            except UnknownCharacterError as exc:
                raise InvalidToken(str(exc), position=exc.position, char=exc.char) from None
        else:
            assert tokens is not None
            if len(tokens) > limit:
                raise InvalidInput(f"tokens has {len(tokens)} ids; the limit is {limit}", code="text_too_long")
            try:
                ids = tokenizer.check_ids(tokens)
            except InvalidTokenIdError as exc:
                raise InvalidToken(str(exc), position=exc.position, token_id=exc.token_id) from None
        if ids.shape[0] == 0:
            raise InvalidInput("the input is empty; give at least one character or token")
        return ids

    def _required(self, text: str | None, tokens: Sequence[int] | None) -> np.ndarray:
        ids = self.tokenize(text, tokens)
        assert ids is not None
        return ids

    def _ttl(self, ttl_s: float | None) -> float:
        if ttl_s is None:
            return self.config.session_ttl_s
        if not 0 < ttl_s <= self.config.max_session_ttl_s:
            raise InvalidInput(f"ttl_seconds must be in (0, {self.config.max_session_ttl_s:g}]")
        return ttl_s

    # ---- steps -------------------------------------------------------------------------------------------
    async def step(
        self,
        ids: np.ndarray,
        *,
        session_id: str | None = None,
        expected_position: int | None = None,
        sample_next: SampleNext | None = None,
        kind: TokenKind = "prompt",
        all_logits: bool = False,
        continue_from: StatelessRow | None = None,
        top_k: int = 0,
    ) -> StepResult:
        """Feed checked ids (T,) (from `tokenize`) in a shared batch: to a session (under its lock, its state
        advancing only on success), or statelessly from zeros or from `continue_from`."""
        self.check_serving()
        if session_id is not None:
            if continue_from is not None:
                raise InvalidInput("a session step continues from the session's own state")
            async with self._locks.hold(session_id):  # what `session` holds, without its generator-based wrapper
                return await SessionLease(self, session_id).step(
                    ids,
                    expected_position=expected_position,
                    sample_next=sample_next,
                    kind=kind,
                    all_logits=all_logits,
                    top_k=top_k,
                )
        if expected_position is not None:
            raise InvalidInput("expected_position applies to sessions only")
        item = WorkItem(ids=ids, sample_next=sample_next, kind=kind, all_logits=all_logits, top_k=top_k)
        if continue_from is not None:
            item.state = (continue_from.h, continue_from.c)
            item.start_position = continue_from.position
        return await self._submit(item)

    @asynccontextmanager
    async def session(self, session_id: str) -> AsyncIterator[SessionLease]:
        """Hold the session's lock: the lease's reads and steps run in order, no other request in between."""
        async with self._locks.hold(session_id):
            yield SessionLease(self, session_id)

    async def head_logits(self, h: np.ndarray) -> np.ndarray:
        """The output layer on the top layer's h: (1, H) -> (1, V), bit for bit what the graph gives after the
        token that produced h (a generation continuing a session with no prompt draws its first token here)."""
        if self._head is None:
            async with self._head_lock:
                if self._head is None:
                    runtime = self._require_runtime()
                    self._head = await asyncio.to_thread(Head.load, runtime.path, runtime)
        return self._head.logits(h)

    # ---- stateless ---------------------------------------------------------------------------------------
    async def predict(
        self, *, text: str | None = None, tokens: Sequence[int] | None = None, top_k: int = 5
    ) -> Prediction:
        """The next-token distribution after the input, from a zero state; nothing is stored."""
        self.check_serving()
        result = await self.step(self._required(text, tokens), top_k=top_k)
        assert result.top is not None
        return Prediction(next=result.top, position=result.position)

    # ---- sessions ----------------------------------------------------------------------------------------
    def _owner_limit(self, owner: str) -> int:
        """The per-key session limit the store enforces atomically with the creation (keys only: without keys
        every caller is one principal, bounded by max_sessions); 0 = none."""
        return self.config.max_sessions_per_key if owner else 0

    def _on_created(self) -> None:
        self.metrics.sessions_created.inc()
        self.metrics.active_sessions.inc()

    async def create_session(
        self,
        *,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        top_k: int = 5,
        ttl_s: float | None = None,
        state: PortableState | None = None,
        owner: str = "",
    ) -> tuple[SessionRecord, list[TokenProb] | None]:
        """A new session (zeros, or a restored state), primed with the input if given (then its next too).
        `owner` (an API key's principal) is written into the id; only that key reaches the session."""
        self.check_accepting_new()
        store = self._require_store()
        ids = self.tokenize(text, tokens, required=False)
        ttl = self._ttl(ttl_s)
        h = c = None
        position = 0
        if state is not None:
            h, c = import_state(state, self.model.metadata.fingerprint, store.state_shape)
            position = state.position
        record = await store.create(
            ttl_s=ttl, h=h, c=c, position=position, owner=owner, max_owned=self._owner_limit(owner)
        )
        self._on_created()
        if ids is None:
            return record, None
        try:
            result = await self.step(ids, session_id=record.session_id, top_k=top_k)
        except BaseException:
            # The session existed only for this request: a failed priming leaves nothing behind.
            with contextlib.suppress(EngineError):
                await store.delete(record.session_id)
            raise
        assert result.record is not None and result.top is not None
        return result.record, result.top

    async def session_predict(
        self,
        session_id: str,
        *,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        top_k: int = 5,
        expected_position: int | None = None,
    ) -> SessionPrediction:
        """Feed the input to the session; its state and position advance only if this succeeds."""
        self.check_serving()
        ids = self._required(text, tokens)
        result = await self.step(ids, session_id=session_id, expected_position=expected_position, top_k=top_k)
        assert result.record is not None and result.top is not None
        return SessionPrediction(record=result.record, next=result.top)

    async def get_session(self, session_id: str, *, expected_position: int | None = None) -> SessionRecord:
        """The session's record; PositionConflict if it is not at `expected_position` (when given)."""
        self.check_serving()
        record = await self._require_store().get_record(session_id)
        check_position(record, expected_position)
        return record

    async def delete_session(self, session_id: str) -> None:
        self.check_serving()
        async with self._locks.hold(session_id):
            await self._require_store().delete(session_id)

    async def reset_session(self, session_id: str) -> SessionRecord:
        self.check_serving()
        async with self._locks.hold(session_id):
            return await self._require_store().reset(session_id)

    async def fork_session(self, session_id: str, ttl_s: float | None = None) -> SessionRecord:
        """A new session with a copy of this one's state and position; the source is unchanged."""
        self.check_accepting_new()
        ttl = None if ttl_s is None else self._ttl(ttl_s)
        async with self._locks.hold(session_id):
            record = await self._require_store().fork(
                session_id, ttl, max_owned=self._owner_limit(owner_of(session_id))
            )
        self._on_created()
        return record

    async def export_state(self, session_id: str) -> PortableState:
        self.check_serving()
        async with self.session(session_id) as lease:
            record, h, c = await lease.read()
        return export_state(self.model.metadata.fingerprint, record.position, h, c)
