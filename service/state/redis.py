"""The Redis state store: sessions shared by every server process pointed at one Redis.

Layout (P = `<prefix>:<first 16 hex digits of the model fingerprint>`, so two models never share states):

- `P:s:<id>`: the session, one binary value: a 60-byte header (magic `LSS1`, layers, hidden as uint32; version,
  position, created_at, last_used_at, expires_at, ttl_s as float64, all little-endian) followed by h then C as
  raw little-endian float32, (layers, hidden) each. Native TTL (PX) = the session's TTL, refreshed on every write.
- `P:seen:<id>`: a marker that outlives the state by `remember_gone_s` ("ttl", or "capacity" once evicted), so a
  request for a session that Redis expired, or another replica evicted, is answered `session_expired`, not
  `session_not_found`. Deleting a session deletes its marker too (the client is told "not found", as in memory).
- `P:exp` and `P:lru`: sorted sets of live ids by expiry and by last use. `count` is ZCARD; `create` sweeps the
  expired and evicts the least-recently-used idle session there when full; `sweep_expired` removes the due ones.
- `P:own:<principal>`: the set of an API key's live session ids (ids `<principal>.<random>`), kept with the index
  by the same scripts, for the per-key session limit (`count_owned` is SCARD).

One round trip per engine batch each way: `load_many` is ONE MGET (states and markers), `save_many` ONE EVALSHA of
a Lua script that compare-and-sets every row on its version and returns per-row results. Every write is a Lua
script, so it is atomic: two replicas stepping one session from the same version cannot both succeed (the second
gets VersionConflict -> 409 position_conflict), and a refused or failed write changes nothing. Lookups that find
a row missing or expired take one more round trip (to reap it from the index and count the eviction once,
fleet-wide): the error path only.

max_sessions is exact across replicas: the capacity check, sweep and eviction run inside the create/fork script,
atomically, against the shared index (ids whose state Redis already expired are swept first). Run Redis with a
`volatile-*` maxmemory policy (or noeviction): every key but the index sets (`exp`, `lru`, `own:*`) carries a
TTL, so Redis may drop states under memory pressure (they then answer session_expired or session_not_found) but
never the index. The per-key limit (`max_owned`) is checked (SCARD of the owner's set) inside the same create/fork
script, so it is exact across replicas too: two replicas creating for one key at the same instant cannot both pass.

Times come from the caller's clock (`now` is passed to the scripts), so replicas need roughly synchronised clocks
(NTP); Redis's own TTL is a backstop that expires abandoned keys even if no replica ever sweeps. The scripts touch
keys derived from the prefix, so this needs a standalone (or Sentinel-managed) Redis, not Redis Cluster.

Unavailability: connection errors and timeouts become StateStoreUnavailable (503 state_store_unavailable); a
background task PINGs Redis every `health_interval_s` and flips `available`, which readiness reports; the pool
reconnects by itself when Redis is back. Commands are retried once on a connection error (a stale pooled
connection after a Redis restart), never on a timeout. A write whose reply is lost (Redis dies after running the
script) is reported as 503 although it may have been applied: a client that retries with `expected_position`
gets 409 and the session's real position in that case, never a double application.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import (
    EngineError,
    SessionExpired,
    SessionNotFound,
    StateMismatch,
    StateStoreUnavailable,
    TooManySessions,
    VersionConflict,
)
from service.session_ids import new_session_id, owner_of
from service.state.store import LoadedStates, SessionRecord, StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MAGIC = b"LSS1"
HEADER = struct.Struct("<4sII6d")  # magic, layers, hidden; version, position, created, last used, expires, ttl
LUA_HEADER = "<c4I4I4dddddd"  # the same layout for Redis's Lua `struct` library (FMT in lua/prelude.lua)
_WIRE = np.dtype("<f4")
_PLACEHOLDER = bytes(HEADER.size)  # the header's bytes in a value sent to a script, which writes the real header
SWEEP_BATCH = 1000
# Redis answers these while it cannot serve writes for now (out of memory, a read-only replica, loading, a stuck
# script): the store is unavailable, not broken.
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "BUSY", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")

# ---- Lua ---------------------------------------------------------------------------------------------------------
# The scripts live in service/state/lua/ (shipped in the wheel): prelude.lua, the helpers every script shares
# (its comments say what every script takes and returns), then one file per script.
SCRIPTS = ("save_many", "create", "fork", "reset", "delete", "reap", "sweep")


@functools.cache
def lua_source(name: str) -> str:
    """The text of service/state/lua/<name>.lua, as packaged."""
    return (resources.files("service.state") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def lua_script(name: str) -> str:
    """The script `name` as sent to Redis: the prelude, then its own body."""
    return lua_source("prelude") + lua_source(name)


def _num(x: float) -> str:
    """A float as Lua's tonumber reads it back exactly."""
    return repr(float(x))


class RedisStateStore(StateStore):
    def __init__(
        self,
        client: aioredis.Redis,
        layers: int,
        hidden: int,
        max_sessions: int,
        *,
        model_fingerprint: str,
        key_prefix: str = "lstm-serve",
        evict_idle_after_s: float = 60.0,
        remember_gone_s: float = 86_400.0,
        health_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        super().__init__(layers, hidden, max_sessions)
        self._redis = client
        self.prefix = f"{key_prefix}:{model_fingerprint.removeprefix('sha256:')[:16]}"
        self.evict_idle_after_s = evict_idle_after_s
        self.remember_gone_s = remember_gone_s
        self.health_interval_s = health_interval_s
        self._clock = clock
        self._state_bytes = 2 * layers * hidden * _WIRE.itemsize
        self._available = True
        self._health: asyncio.Task[None] | None = None
        self._save = client.register_script(lua_script("save_many"))
        self._create = client.register_script(lua_script("create"))
        self._fork = client.register_script(lua_script("fork"))
        self._reset = client.register_script(lua_script("reset"))
        self._delete = client.register_script(lua_script("delete"))
        self._reap = client.register_script(lua_script("reap"))
        self._sweep = client.register_script(lua_script("sweep"))

    @classmethod
    def from_url(
        cls,
        url: str,
        layers: int,
        hidden: int,
        max_sessions: int,
        *,
        socket_timeout_s: float = 1.0,
        connect_timeout_s: float = 0.5,
        max_connections: int = 64,
        **kwargs: Any,
    ) -> RedisStateStore:
        """A store with its own connection pool: short timeouts, one immediate retry on a connection error."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=max_connections,
            health_check_interval=0,
            decode_responses=False,
        )
        return cls(client, layers, hidden, max_sessions, **kwargs)

    # ---- availability ------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available

    def _set_available(self, ok: bool, why: object = None) -> None:
        if ok == self._available:
            return
        self._available = ok
        if ok:
            log.info("state store reachable again", extra={"backend": "redis"})
        else:
            log.warning("state store unreachable: %s", why, extra={"backend": "redis"})

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._set_available(False, exc)
            return False
        self._set_available(True)
        return True

    async def start(self) -> None:
        await self.ping()
        if self._health is None:
            self._health = asyncio.get_running_loop().create_task(self._health_loop(), name="lstm-serve-redis-health")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.ping()

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def _call(self, what: Awaitable[T]) -> T:
        """Run one Redis call; unreachable or refusing Redis -> StateStoreUnavailable (nothing was changed)."""
        try:
            return await what
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            self._set_available(False, exc)
            raise StateStoreUnavailable("the session state store (Redis) cannot be reached; retry shortly") from None
        except ResponseError as exc:
            if str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise StateStoreUnavailable(f"the session state store (Redis) refused the request: {exc}") from None
            raise

    async def _script(self, script: Any, args: Sequence[bytes | str]) -> list[Any]:
        now = self._clock()
        out: list[Any] = await self._call(script(args=[self.prefix, _num(now), _num(self.remember_gone_s), *args]))
        self._record_evictions("ttl", int(out[0]))
        self._record_evictions("capacity", int(out[1]))
        return out[2:]

    # ---- encoding ----------------------------------------------------------------------------------------
    def _skey(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}"

    def _gkey(self, session_id: str) -> str:
        return f"{self.prefix}:seen:{session_id}"

    def _header(self, session_id: str, raw: bytes) -> SessionRecord:
        magic, layers, hidden, version, position, created, used, expires, ttl = HEADER.unpack_from(raw)
        if magic != MAGIC or (layers, hidden) != self.state_shape:
            raise StateMismatch(
                f"session {session_id!r} holds a state of another format or shape "
                f"({magic!r}, {layers}x{hidden}); the model needs {self.layers}x{self.hidden}"
            )
        return SessionRecord(
            session_id=session_id,
            position=int(position),
            version=int(version),
            created_at=created,
            last_used_at=used,
            expires_at=expires,
            ttl_s=ttl,
        )

    def _pack_header(self, version: int, position: int, now: float, ttl_s: float) -> bytes:
        return HEADER.pack(MAGIC, self.layers, self.hidden, version, position, now, now, now + ttl_s, ttl_s)

    def _decode(self, session_id: str, raw: bytes) -> tuple[SessionRecord, np.ndarray]:
        """A stored value -> its record and (2, layers, hidden) float32: h then C."""
        record = self._header(session_id, raw)
        if len(raw) != HEADER.size + self._state_bytes:
            raise StateMismatch(
                f"session {session_id!r} holds {len(raw) - HEADER.size} bytes of state, not {self._state_bytes}"
            )
        state = np.frombuffer(raw, dtype=_WIRE, offset=HEADER.size).reshape(2, self.layers, self.hidden)
        return record, state

    def _state_of(self, h: np.ndarray, c: np.ndarray) -> bytes:
        return h.astype(_WIRE, copy=False).tobytes() + c.astype(_WIRE, copy=False).tobytes()

    def _check_state(self, a: np.ndarray, name: str) -> np.ndarray:
        if a.shape != self.state_shape:
            raise StateMismatch(f"{name} has shape {list(a.shape)}, the model needs {list(self.state_shape)}")
        return a

    @staticmethod
    def _missing(session_id: str, why: bytes | str | None) -> EngineError:
        reason = why.decode() if isinstance(why, bytes) else why
        if reason is None or reason == "missing":
            return SessionNotFound(session_id)
        return SessionExpired(session_id, reason)

    def _full(self, payload: bytes) -> TooManySessions:
        retry = float(payload) if payload else math.inf
        retry = retry if math.isfinite(retry) else self.evict_idle_after_s
        return TooManySessions(self.max_sessions, retry_after=max(1.0, math.ceil(retry)))

    # ---- reads -------------------------------------------------------------------------------------------
    async def _read(self, session_ids: Sequence[str]) -> list[tuple[SessionRecord, np.ndarray] | EngineError]:
        """One MGET of the states and markers; rows missing or expired are reaped (error path only)."""
        n = len(session_ids)
        values: list[Any] = await self._call(  # bytes or None (decode_responses=False)
            self._redis.mget([self._skey(s) for s in session_ids] + [self._gkey(s) for s in session_ids])
        )
        now = self._clock()
        out: list[tuple[SessionRecord, np.ndarray] | EngineError] = []
        reap: list[str] = []
        for i, sid in enumerate(session_ids):
            raw = values[i]
            if raw is None:
                err = self._missing(sid, values[n + i])
                if isinstance(err, SessionExpired) and err.reason == "ttl":  # maybe still in the index
                    reap.append(sid)
                out.append(err)
                continue
            try:
                record, state = self._decode(sid, raw)
            except StateMismatch as exc:
                out.append(exc)
                continue
            if record.expires_at <= now:
                reap.append(sid)
                out.append(SessionExpired(sid, "ttl"))
                continue
            out.append((record, state))
        if reap:
            await self._script(self._reap, reap)
        return out

    async def _read_one(self, session_id: str) -> tuple[SessionRecord, np.ndarray]:
        (found,) = await self._read([session_id])
        if isinstance(found, EngineError):
            raise found
        return found

    # ---- the StateStore interface ------------------------------------------------------------------------
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
        zeros = np.zeros(self.state_shape, dtype=np.float32)
        h = zeros if h is None else self._check_state(h, "h")
        c = zeros if c is None else self._check_state(c, "c")
        state = self._state_of(h, c)
        for _ in range(3):  # an id already taken: never in practice (128 random bits)
            sid = new_session_id(owner)
            now = self._clock()
            header = self._pack_header(1, position, now, ttl_s)
            status, payload = await self._script(
                self._create,
                [
                    str(self.max_sessions),
                    _num(self.evict_idle_after_s),
                    sid,
                    header + state,
                    _num(ttl_s),
                    str(max(0, int(max_owned))),
                ],
            )
            if status == b"owned":
                raise TooManySessions(max_owned, retry_after=1.0, per_key=True)
            if status == b"full":
                raise self._full(payload)
            if status == b"ok":
                return self._header(sid, header)
        raise RuntimeError("could not draw an unused session id")

    async def load_many(self, session_ids: Sequence[str]) -> LoadedStates:
        batch = len(session_ids)
        h = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)  # (layers, batch, hidden)
        c = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)
        records: list[SessionRecord | EngineError] = []
        if batch == 0:
            return LoadedStates(h=h, c=c, records=records)
        for row, found in enumerate(await self._read(session_ids)):
            if isinstance(found, EngineError):
                records.append(found)
                continue
            record, state = found
            h[:, row] = state[0]
            c[:, row] = state[1]
            records.append(record)
        return LoadedStates(h=h, c=c, records=records)

    async def save_many(
        self,
        session_ids: Sequence[str],
        h: np.ndarray,
        c: np.ndarray,
        positions: Sequence[int],
        expected_versions: Sequence[int],
    ) -> list[SessionRecord | EngineError]:
        batch = len(session_ids)
        if h.shape != (self.layers, batch, self.hidden) or c.shape != h.shape:
            raise ValueError(f"save_many got h {h.shape}, c {c.shape} for {batch} sessions")
        if batch == 0:
            return []
        # (layers, batch, hidden) -> (batch, layers, hidden), little-endian float32, one bytes object per row
        hb = np.ascontiguousarray(h.transpose(1, 0, 2), dtype=_WIRE)
        cb = np.ascontiguousarray(c.transpose(1, 0, 2), dtype=_WIRE)
        args: list[bytes | str] = [str(batch)]
        for row, sid in enumerate(session_ids):
            args += [
                sid,
                str(int(expected_versions[row])),
                str(int(positions[row])),
                _PLACEHOLDER + hb[row].tobytes() + cb[row].tobytes(),
            ]
        flat = await self._script(self._save, args)
        out: list[SessionRecord | EngineError] = []
        for row, sid in enumerate(session_ids):
            status, payload = flat[2 * row], flat[2 * row + 1]
            if status == b"ok":
                out.append(self._header(sid, payload))
            elif status == b"conflict":
                out.append(VersionConflict(sid, self._header(sid, payload).position))
            else:
                out.append(self._missing(sid, payload))
        return out

    async def get_record(self, session_id: str) -> SessionRecord:
        record, _ = await self._read_one(session_id)
        return record

    async def get_state(self, session_id: str) -> tuple[SessionRecord, np.ndarray, np.ndarray]:
        record, state = await self._read_one(session_id)
        return record, state[0].astype(np.float32), state[1].astype(np.float32)  # copies, native byte order

    async def delete(self, session_id: str) -> None:
        status, payload = await self._script(self._delete, [session_id])
        if status != b"ok":
            raise self._missing(session_id, payload)
        self._record_evictions("deleted", 1)

    async def reset(self, session_id: str) -> SessionRecord:
        status, payload = await self._script(self._reset, [session_id, bytes(HEADER.size + self._state_bytes)])
        if status != b"ok":
            raise self._missing(session_id, payload)
        return self._header(session_id, payload)

    async def fork(self, session_id: str, ttl_s: float | None = None, *, max_owned: int = 0) -> SessionRecord:
        for _ in range(3):
            sid = new_session_id(owner_of(session_id))
            status, payload = await self._script(
                self._fork,
                [
                    str(self.max_sessions),
                    _num(self.evict_idle_after_s),
                    session_id,
                    sid,
                    "" if ttl_s is None else _num(ttl_s),
                    str(max(0, int(max_owned))),
                ],
            )
            if status == b"gone":
                raise self._missing(session_id, payload)
            if status == b"owned":
                raise TooManySessions(max_owned, retry_after=1.0, per_key=True)
            if status == b"full":
                raise self._full(payload)
            if status == b"ok":
                return self._header(sid, payload)
        raise RuntimeError("could not draw an unused session id")

    async def count(self) -> int:
        return int(await self._call(self._redis.zcard(f"{self.prefix}:exp")))

    async def count_owned(self, owner: str) -> int:
        # SCARD of the owner's set, kept by the scripts wherever a session is born or leaves the index. Like
        # count(), it includes sessions Redis expired that no sweep has reaped yet.
        return int(await self._call(self._redis.scard(f"{self.prefix}:own:{owner}"))) if owner else 0

    async def sweep_expired(self) -> int:
        removed = 0
        for _ in range(100):  # bounded: at most 100 x SWEEP_BATCH ids per call, the next sweep takes the rest
            (seen,) = await self._script(self._sweep, [str(SWEEP_BATCH)])
            removed_now = int(seen)
            removed += removed_now
            if removed_now < SWEEP_BATCH:
                break
        return removed
