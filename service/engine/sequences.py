"""Open Inference Protocol sequences (Triton's sequence extension), kept as engine sessions.

A sequence is a session: `sequence_start` makes a fresh one, every request feeds its input ids to it and gets the
logits after its last id, `sequence_end` deletes it once answered. A request that continues a sequence this server
does not hold (never started, already ended, or its session expired) is refused: silently starting from zeros
would return plausible but wrong logits.

The table from sequence to session id lives in this process, like the per-instance state of Triton's own sequence
batcher: a sequence's requests must reach the replica that started it (route on the sequence id). The table is
bounded by max_sessions; an entry dropped from it leaves its session to expire by TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from service.engine.keyed_locks import KeyedLocks
from service.errors import EngineError, InvalidInput, SequenceNotStarted, SessionExpired, SessionNotFound

if TYPE_CHECKING:
    from service.engine.engine import Engine

MAX_ROWS = 4096  # rows of one stateless request; each is a work item of the batcher


def sequence_key(model: str, sequence_id: int | str, owner: str = "") -> str:
    """The one place a sequence's key is built. JSON keeps the integer 5 and the string "5" apart, as Triton does;
    the owner (an API key's principal) keeps two keys' sequence 1 apart."""
    return f"v2:{owner}:{model}:{json.dumps(sequence_id)}"


class Sequences:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._locks = KeyedLocks()  # one per sequence key: start, feed and end of a request are atomic
        self._sessions: OrderedDict[str, str] = OrderedDict()  # sequence key -> session id, least recent first

    def __len__(self) -> int:
        return len(self._sessions)

    async def infer(
        self, key: str, sequence_id: int | str, ids: np.ndarray, *, start: bool, end: bool, owner: str = ""
    ) -> np.ndarray:
        """Feed ids (T,) to the sequence's session; -> the logits after the last one, (V,) float32."""
        engine = self._engine
        engine.check_serving()
        self._check_cost(1, len(ids))
        checked = self._check(ids)
        # The sequence's own lock makes start, feed and end of one request atomic against its other requests.
        async with self._locks.hold(key):
            session_id = self._sessions.get(key)
            if start:
                if session_id is not None:
                    await self._free(key, session_id)
                record, _ = await engine.create_session(owner=owner)
                session_id = record.session_id
                self._remember(key, session_id)
            elif session_id is None:
                raise SequenceNotStarted(sequence_id)
            try:
                result = await engine.step(checked, session_id=session_id)
            except (SessionNotFound, SessionExpired):
                self._sessions.pop(key, None)
                raise SequenceNotStarted(sequence_id) from None
            except BaseException:
                if start:  # a sequence whose first request failed was never started
                    await self._free(key, session_id)
                raise
            if end:
                await self._free(key, session_id)
            else:
                self._sessions.move_to_end(key)
        return result.logits

    async def stateless(self, rows: np.ndarray) -> np.ndarray:
        """Each row (B, T) from a zero state, all as work items of the shared batcher; -> (B, V) float32."""
        engine = self._engine
        engine.check_serving()
        if len(rows) > MAX_ROWS:
            raise InvalidInput(f"at most {MAX_ROWS} rows per request, got {len(rows)}")
        self._check_cost(*rows.shape)
        checked = [self._check(row) for row in rows]
        results = await asyncio.gather(*(engine.step(row) for row in checked))
        return np.stack([r.logits for r in results])

    def _check_cost(self, rows: int, length: int) -> None:
        """The per-request cost cap: rows x length token steps, checked before a single id is looked at, so a
        request too big to serve costs nothing but this multiplication."""
        limit = self._engine.config.max_request_tokens
        if rows * length > limit:
            raise InvalidInput(
                f"the request costs {rows} rows x {length} tokens = {rows * length} token steps; the limit is "
                f"{limit} per request (max_request_tokens)",
                code="text_too_long",
            )

    def _check(self, ids: np.ndarray) -> np.ndarray:
        checked = self._engine.tokenize(None, ids.tolist())
        assert checked is not None
        return checked

    def _remember(self, key: str, session_id: str) -> None:
        self._sessions[key] = session_id
        while len(self._sessions) > self._engine.config.max_sequences:
            self._sessions.popitem(last=False)

    async def _free(self, key: str, session_id: str) -> None:
        self._sessions.pop(key, None)
        with contextlib.suppress(EngineError):  # already expired or evicted: nothing left to free
            await self._engine.delete_session(session_id)
