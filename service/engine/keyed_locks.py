"""FIFO ordering per key (a session id, or a V2 sequence key): one asyncio.Lock per key, held across a request,
dropped when idle.

asyncio.Lock wakes its waiters in the order they started waiting and a newcomer never overtakes a waiter, so
requests to one session are applied one after another in arrival order. Entries are reference-counted and
removed when no request holds or waits for them, so the table stays as small as the set of busy sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        entry = self._entries.get(session_id)
        if entry is None:
            entry = self._entries[session_id] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[session_id]
