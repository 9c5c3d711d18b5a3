"""The Engine facade the HTTP routes call: model, batcher, state store and per-session ordering in one place.

Every request to a session holds that session's lock from before it is queued until its answer is back, so a
session's requests run strictly one after another in arrival order and never share a batch. Input is validated
before anything is queued, and a step's write is compare-and-set on the version it read, so a request that fails
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.onnx_meta import ModelMetadata
from model.tokenizer import InvalidTokenIdError, UnknownCharacterError
from service.config import Settings
from service.engine.batcher import Batcher, Step, StepResult
from service.engine.locks import SessionLocks
from service.engine.runtime import OnnxRuntime, verify_sha256
from service.engine.state_io import PortableState, export_state, import_state
from service.engine.topk import TokenProb, top_k
from service.errors import Draining, EngineError, InvalidInput, InvalidToken, NotReady, TooManySessions
from service.metrics import Metrics
from service.session_ids import owner_of
from service.state.memory import MemoryStateStore
from service.state.snapshot import Snapshotter
from service.state.store import SessionRecord, StateStore

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


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, store: StateStore | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._store = store
        self._runtime: OnnxRuntime | None = None
        self._batcher: Batcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._locks = SessionLocks()
        self._ready = False
        self._draining = False
        self._stopping = False  # SIGTERM received: no new sessions or streams, readiness false
        self._snapshots: Snapshotter | None = None
        self.shutdown_clean = True  # False when the drain could not keep everything (the final snapshot failed)

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

    def check_accepting_new(self) -> None:
        """Raise Draining once shutdown started; for work that would outlive it (new sessions, streams)."""
        self._check_serving()
        if self._stopping:
            raise Draining()

    @property
    def runtime(self) -> OnnxRuntime:
        if self._runtime is None:
            raise NotReady()
        return self._runtime

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise NotReady()
        return self._store

    @property
    def batcher(self) -> Batcher:
        if self._batcher is None:
            raise NotReady()
        return self._batcher

    @property
    def locks(self) -> SessionLocks:
        """The per-session locks; generation, inspection and V2 sequences hold them as the requests here do."""
        return self._locks

    @property
    def metadata(self) -> ModelMetadata:
        return self.runtime.metadata

    async def start(self) -> None:
        """Load the model (off the event loop), make the store, start the batcher and sweeper, warm up."""
        s = self.settings
        if s.model_sha256 is not None:
            await asyncio.to_thread(verify_sha256, s.model_path, s.model_sha256)
        runtime = await asyncio.to_thread(
            OnnxRuntime,
            s.model_path,
            s.provider,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
            graph_optimization=s.graph_optimization,
            allow_spinning=s.allow_spinning,
        )
        self._runtime = runtime
        if self._store is None:
            self._store = self._make_store(runtime)
            if s.snapshot_path is not None and isinstance(self._store, MemoryStateStore):
                self._snapshots = Snapshotter(
                    self._store, s.snapshot_path, s.snapshot_interval_s, runtime.metadata.fingerprint
                )
                await self._snapshots.restore()
                self.metrics.active_sessions.set(await self._store.count())
            elif s.snapshot_path is not None:
                log.warning("snapshot_path is ignored: only the memory backend snapshots (Redis keeps the sessions)")
        self._store.add_eviction_listener(self._on_evicted)
        await self._store.start()
        self._batcher = Batcher(
            runtime, self._store, self.metrics, max_batch_size=s.max_batch_size, max_batch_delay_s=s.max_batch_delay_s
        )
        self._batcher.start()
        try:
            await self._warm_up()
        except BaseException:
            await self._batcher.stop()  # no worker thread left behind by a failed start
            raise
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="lstm-serve-sweeper")
        if self._snapshots is not None:
            self._snapshots.start()
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
                "path": str(s.model_path),
                "max_batch_size": s.max_batch_size,
                "max_batch_delay_ms": s.max_batch_delay_ms,
            },
        )

    def _make_store(self, runtime: OnnxRuntime) -> StateStore:
        s = self.settings
        if s.state_backend == "redis":
            from service.state.redis import RedisStateStore

            return RedisStateStore.from_url(
                s.redis_url,
                runtime.layers,
                runtime.hidden,
                s.max_sessions,
                model_fingerprint=runtime.metadata.fingerprint,
                key_prefix=s.redis_key_prefix,
                evict_idle_after_s=s.evict_idle_after_s,
                remember_gone_s=86_400.0 if s.remember_expired else 0.0,
            )
        return MemoryStateStore(
            runtime.layers,
            runtime.hidden,
            s.max_sessions,
            evict_idle_after_s=s.evict_idle_after_s,
            remember_gone=s.remember_expired,
        )

    async def _warm_up(self) -> None:
        """Run the shapes serving will see (a prompt, a full batch of single tokens) so that ONNX Runtime has
        allocated and optimised before the first client waits on it; check the outputs are sane."""
        runtime = self.runtime
        layers, hidden, batch = runtime.layers, runtime.hidden, self.settings.max_batch_size

        def shapes() -> None:
            for b, t in ((1, 1), (batch, 1), (1, 16)):
                zeros = np.zeros((layers, b, hidden), dtype=np.float32)  # (L, B, H)
                logits, hn, _ = runtime.run(np.zeros((b, t), dtype=np.int64), zeros, zeros)
                if logits.shape != (b, t, runtime.vocab_size) or hn.shape != zeros.shape:
                    raise RuntimeError(f"model returned logits {logits.shape}, hn {hn.shape} for input ({b}, {t})")
                if not np.isfinite(logits).all():
                    raise RuntimeError("model returned non-finite logits during warm-up")

        await asyncio.to_thread(shapes)
        # And once through the batcher, which starts its worker thread.
        tok = runtime.metadata.tokenizer
        text = "".join(ch for ch in WARMUP_TEXT if ch in tok.chars) or tok.chars[0]
        await self.batcher.submit(Step(ids=tok.encode(text)))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.store.sweep_expired()
                # Reconcile the gauge with the store's own count (a shared store changes under other servers).
                self.metrics.active_sessions.set(await self.store.count())
            except Exception:  # a remote store may fail now and then; the next sweep tries again
                log.exception("sweeping expired sessions failed")

    async def drain(self) -> None:
        """Stop accepting work, finish everything queued, stop the batcher and the sweeper."""
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
        if self._snapshots is not None:
            # After the last batch: the final snapshot misses no write. If it fails, the exit status says so.
            self.shutdown_clean = await self._snapshots.stop()
        if self._store is not None:
            await self._store.close()
        log.info("drained")

    def _on_evicted(self, reason: str, count: int) -> None:
        # Every removal, whatever its cause (lazy expiry on access included), passes through here.
        self.metrics.sessions_evicted.labels(reason).inc(count)
        self.metrics.active_sessions.dec(count)

    async def check_owner_quota(self, owner: str) -> None:
        """TooManySessions when an API key already holds max_sessions_per_key sessions (keys only: without keys
        every caller is one principal, bounded by max_sessions)."""
        limit = self.settings.max_sessions_per_key
        if owner and limit and await self.store.count_owned(owner) >= limit:
            raise TooManySessions(limit, retry_after=1.0, per_key=True)

    def _on_created(self) -> None:
        self.metrics.sessions_created.inc()
        self.metrics.active_sessions.inc()

    def _check_serving(self) -> None:
        if self._draining:
            raise Draining()
        if not self._ready:
            raise NotReady()

    def check_serving(self) -> None:
        """Raise Draining or NotReady unless the engine takes work (for the engine's extensions)."""
        self._check_serving()

    # ---- input -------------------------------------------------------------------------------------------
    def encode(self, text: str | None, tokens: Sequence[int] | None) -> np.ndarray | None:
        """Text or token ids -> (T,) int64, T >= 1; None when neither is given. Raises InvalidInput/InvalidToken."""
        if text is not None and tokens is not None:
            raise InvalidInput("give either 'text' or 'tokens', not both")
        if text is None and tokens is None:
            return None
        limit = self.settings.max_text_length
        tokenizer = self.metadata.tokenizer
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
        ids = self.encode(text, tokens)
        if ids is None:
            raise InvalidInput("give 'text' or 'tokens'")
        return ids

    def _ttl(self, ttl_s: float | None) -> float:
        if ttl_s is None:
            return self.settings.session_ttl_s
        if not 0 < ttl_s <= self.settings.max_session_ttl_s:
            raise InvalidInput(f"ttl_seconds must be in (0, {self.settings.max_session_ttl_s:g}]")
        return ttl_s

    def _top(self, result: StepResult, k: int) -> list[TokenProb]:
        return top_k(result.logits, k, self.metadata.tokenizer)

    # ---- stateless ---------------------------------------------------------------------------------------
    async def predict(
        self, *, text: str | None = None, tokens: Sequence[int] | None = None, top_k: int = 5
    ) -> Prediction:
        """The next-token distribution after the input, from a zero state; nothing is stored."""
        self._check_serving()
        ids = self._required(text, tokens)
        result = await self.batcher.submit(Step(ids=ids))
        return Prediction(next=self._top(result, top_k), position=result.position)

    # ---- sessions ----------------------------------------------------------------------------------------
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
        ids = self.encode(text, tokens)
        ttl = self._ttl(ttl_s)
        h = c = None
        position = 0
        if state is not None:
            h, c = import_state(state, self.metadata.fingerprint, self.store.state_shape)
            position = state.position
        await self.check_owner_quota(owner)
        record = await self.store.create(ttl_s=ttl, h=h, c=c, position=position, owner=owner)
        self._on_created()
        if ids is None:
            return record, None
        try:
            async with self._locks.hold(record.session_id):
                result = await self.batcher.submit(Step(ids=ids, session_id=record.session_id))
        except BaseException:
            # The session existed only for this request: a failed priming leaves nothing behind.
            with contextlib.suppress(EngineError):
                await self.store.delete(record.session_id)
            raise
        assert result.record is not None
        return result.record, self._top(result, top_k)

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
        self._check_serving()
        ids = self._required(text, tokens)
        async with self._locks.hold(session_id):
            result = await self.batcher.submit(
                Step(ids=ids, session_id=session_id, expected_position=expected_position)
            )
        assert result.record is not None
        return SessionPrediction(record=result.record, next=self._top(result, top_k))

    async def get_session(self, session_id: str) -> SessionRecord:
        self._check_serving()
        return await self.store.get_record(session_id)

    async def delete_session(self, session_id: str) -> None:
        self._check_serving()
        async with self._locks.hold(session_id):
            await self.store.delete(session_id)

    async def reset_session(self, session_id: str) -> SessionRecord:
        self._check_serving()
        async with self._locks.hold(session_id):
            return await self.store.reset(session_id)

    async def fork_session(self, session_id: str, ttl_s: float | None = None) -> SessionRecord:
        """A new session with a copy of this one's state and position; the source is unchanged."""
        self.check_accepting_new()
        ttl = None if ttl_s is None else self._ttl(ttl_s)
        await self.check_owner_quota(owner_of(session_id))
        async with self._locks.hold(session_id):
            record = await self.store.fork(session_id, ttl)
        self._on_created()
        return record

    async def export_state(self, session_id: str) -> PortableState:
        self._check_serving()
        async with self._locks.hold(session_id):
            record, h, c = await self.store.get_state(session_id)
        return export_state(self.metadata.fingerprint, record.position, h, c)

    # ---- description -------------------------------------------------------------------------------------
    async def model_info(self) -> dict[str, Any]:
        self._check_serving()
        meta, s, store = self.metadata, self.settings, self.store
        return {
            "name": meta.name,
            "version": meta.version,
            "fingerprint": meta.fingerprint,
            "val_loss": meta.val_loss,
            "vocabulary": "".join(meta.tokenizer.chars),
            "vocab_size": meta.config.vocab_size,
            "embed_size": meta.config.embed_size,
            "layers": meta.config.num_layers,
            "hidden_size": meta.config.hidden_size,
            "peephole": meta.config.peephole,
            "provider": self.runtime.provider,
            "batching": {"max_batch_size": s.max_batch_size, "max_batch_delay_ms": s.max_batch_delay_ms},
            "sessions": {
                "backend": s.state_backend,
                "active": await store.count(),
                "max_sessions": s.max_sessions,
                "default_ttl_seconds": s.session_ttl_s,
                "max_ttl_seconds": s.max_session_ttl_s,
                "state_bytes": 2 * meta.config.num_layers * meta.config.hidden_size * 4,
                "evicted": dict(store.evictions),
            },
            "limits": {"max_text_length": s.max_text_length, "max_request_bytes": s.max_request_bytes},
        }
