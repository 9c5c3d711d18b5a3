"""The state-store interface: the engine and the API see only this, so a Redis store can replace the in-memory one.

A session is a record (position, version, timestamps) plus its state: h and C, each (layers, hidden) float32.
Batch methods take and return states in the ONNX layout (layers, batch, hidden) so the batcher gathers a whole
batch in one call (`load_many`) and writes it back in one call (`save_many`): one round trip per batch for a
remote store. Writes are compare-and-set on the version read, so an update is never lost or applied twice even
if two writers race (several server processes sharing one Redis, say).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.errors import EngineError

EvictionReason = Literal["ttl", "capacity", "deleted"]
EvictionListener = Callable[[EvictionReason, int], None]
EVICTION_REASONS: tuple[EvictionReason, ...] = ("ttl", "capacity", "deleted")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything about a session except its state. Times are Unix seconds."""

    session_id: str
    position: int  # tokens consumed since creation or the last reset
    version: int  # changes on every write; writes are compare-and-set on it
    created_at: float
    last_used_at: float
    expires_at: float  # last_used_at + ttl_s: idle past this, the session is gone
    ttl_s: float


@dataclass(frozen=True, slots=True)
class LoadedStates:
    """`load_many`'s answer: states of the batch's rows and, per row, the record read or why there is none."""

    h: np.ndarray  # (layers, batch, hidden) float32; zeros in rows whose session is missing
    c: np.ndarray  # (layers, batch, hidden) float32
    records: list[SessionRecord | EngineError]  # SessionNotFound / SessionExpired for missing rows


class StateStore(ABC):
    """Sessions and their LSTM states. Every method is a coroutine so a remote backend fits behind it."""

    def __init__(self, layers: int, hidden: int, max_sessions: int) -> None:
        self.layers = layers
        self.hidden = hidden
        self.max_sessions = max_sessions
        self._evictions: dict[EvictionReason, int] = dict.fromkeys(EVICTION_REASONS, 0)
        self._listeners: list[EvictionListener] = []

    # Eviction accounting, shared by every backend: counted here and pushed to listeners (the metrics).
    def add_eviction_listener(self, listener: EvictionListener) -> None:
        self._listeners.append(listener)

    def _record_evictions(self, reason: EvictionReason, count: int) -> None:
        if count <= 0:
            return
        self._evictions[reason] += count
        for listener in self._listeners:
            listener(reason, count)

    @property
    def evictions(self) -> Mapping[EvictionReason, int]:
        """Sessions removed so far, by reason (ttl, capacity, deleted by their client)."""
        return dict(self._evictions)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of one session's h (and of its C): (layers, hidden)."""
        return (self.layers, self.hidden)

    @abstractmethod
    async def create(
        self,
        *,
        ttl_s: float,
        h: np.ndarray | None = None,
        c: np.ndarray | None = None,
        position: int = 0,
        owner: str = "",
        max_owned: int = 0,
    ) -> SessionRecord:
        """A new session with state zeros, or h and c each (layers, hidden), its id tagged with `owner`.
        Raises TooManySessions when full, and TooManySessions(per_key=True) when `owner` already holds `max_owned`
        sessions (0: no per-key limit); the check and the creation are one atomic step, across replicas too."""

    @abstractmethod
    async def load_many(self, session_ids: Sequence[str]) -> LoadedStates:
        """Gather the states of several distinct sessions into one (layers, batch, hidden) pair, in order."""

    @abstractmethod
    async def save_many(
        self,
        session_ids: Sequence[str],
        h: np.ndarray,
        c: np.ndarray,
        positions: Sequence[int],
        expected_versions: Sequence[int],
    ) -> list[SessionRecord | EngineError]:
        """Scatter h, c (layers, batch, hidden) back, row by row, each only if its version is still the one read.

        Per row: the new record, or the error that refused the write (PositionConflict when the session changed
        since it was read, SessionNotFound / SessionExpired when it is gone); refused rows change nothing.
        """

    @abstractmethod
    async def get_record(self, session_id: str) -> SessionRecord:
        """The record, or SessionNotFound / SessionExpired."""

    @abstractmethod
    async def get_state(self, session_id: str) -> tuple[SessionRecord, np.ndarray, np.ndarray]:
        """The record with copies of h and c, each (layers, hidden)."""

    @abstractmethod
    async def delete(self, session_id: str) -> None:
        """Remove a session (counted as reason `deleted`)."""

    @abstractmethod
    async def reset(self, session_id: str) -> SessionRecord:
        """State back to zeros and position 0; the session is used, so its TTL restarts."""

    @abstractmethod
    async def fork(self, session_id: str, ttl_s: float | None = None, *, max_owned: int = 0) -> SessionRecord:
        """A new session with a copy of this one's state and position (its TTL unless `ttl_s` is given); the copy
        has the source's owner, and is refused like `create` when that owner already holds `max_owned` sessions."""

    @abstractmethod
    async def count(self) -> int:
        """Sessions currently held (expired ones not yet swept may be included)."""

    @abstractmethod
    async def count_owned(self, owner: str) -> int:
        """Sessions currently held whose ids carry `owner` (for per-key limits)."""

    @abstractmethod
    async def sweep_expired(self) -> int:
        """Remove every session idle past its TTL; return how many were removed."""

    @property
    def available(self) -> bool:
        """False while a remote backend cannot be reached (readiness reports it); the in-memory store always is."""
        return True

    async def start(self) -> None:  # noqa: B027 - optional hook: remote backends start a health check here
        """Start background work; the in-memory store has none."""

    async def close(self) -> None:  # noqa: B027 - optional hook: remote backends close connections here
        """Release resources; the in-memory store has none."""
