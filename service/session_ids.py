"""Session ids and who owns them: one place that the state stores and the security layer both use.

A session id is 128 random bits, URL-safe; a session made by an API key carries the key's principal in front
(`<principal>.<random>`), so ownership is part of the id and another key is answered session_not_found without a
lookup.
"""

from __future__ import annotations

import secrets

OWNER_SEPARATOR = "."  # not in the base64url alphabet of the random part


def new_session_id(owner: str = "") -> str:
    """A session id with 128 random bits, URL-safe (22 characters): unguessable, so it doubles as a capability.

    A session created by an API key carries that key's principal in front (`<principal>.<random>`), so that who
    owns a session is part of its id: any other key is answered session_not_found without a lookup.
    """
    token = secrets.token_urlsafe(16)
    return f"{owner}{OWNER_SEPARATOR}{token}" if owner else token


def owner_of(session_id: str) -> str:
    """The principal a session id belongs to ("" for sessions made without API keys)."""
    owner, sep, _ = session_id.rpartition(OWNER_SEPARATOR)
    return owner if sep else ""
