"""FIFO ordering per key (a session id, or a V2 sequence key): one asyncio.Lock per key, held across a request,
dropped when idle.

asyncio.Lock wakes its waiters in the order they started waiting and a newcomer never overtakes a waiter, so
requests to one session are applied one after another in arrival order. Entries are reference-counted and
removed when no request holds or waits for them, so the table stays as small as the set of busy sessions.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Hold:
    """`async with locks.hold(key)`: a class, not an @asynccontextmanager generator, which costs a few us more on
    every session request."""

    __slots__ = ("_entries", "_entry", "_key")

    def __init__(self, entries: dict[str, _Entry], key: str) -> None:
        self._entries = entries
        self._key = key

    async def __aenter__(self) -> None:
        entry = self._entries.get(self._key)
        if entry is None:
            entry = self._entries[self._key] = _Entry()
        entry.users += 1  # the entry stays while anyone holds or waits for it
        self._entry = entry
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting: not a holder, no longer a user
            self._release_user()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entry.lock.release()
        self._release_user()

    def _release_user(self) -> None:
        entry = self._entry
        entry.users -= 1
        if entry.users == 0:
            del self._entries[self._key]


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def hold(self, session_id: str) -> _Hold:
        return _Hold(self._entries, session_id)
