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


# ---- model version tags (a model repository) -------------------------------------------------------------------
# A session made on a version of a repository's model carries `~<name>-<version>` after its principal
# (`<principal>~<name>-<version>.<random>`, or `~<name>-<version>.<random>` without keys): the session stays pinned
# to that version and any route finds its engine from the id alone. The state stores see principal and tag together
# as the session's owner (forks keep both); ids without a tag keep their meaning. '~' is in neither a principal nor
# a model name nor the random part.
TAG_SEPARATOR = "~"


def tagged_owner(principal: str, model: str, version: str) -> str:
    """The owner to create a session with on a repository's model version."""
    return f"{principal}{TAG_SEPARATOR}{model}-{version}"


def session_owner(session_id: str) -> str:
    """Who a session id belongs to (`owner_of`) without any model version tag."""
    return owner_of(session_id).partition(TAG_SEPARATOR)[0]


def model_tag(session_id: str) -> tuple[str, str] | None:
    """(model name, version) of a tagged session id; None for an id without a tag."""
    _, sep, tag = owner_of(session_id).partition(TAG_SEPARATOR)
    if not sep:
        return None
    name, dash, version = tag.rpartition("-")
    return (name, version) if dash and name else None


# ---- anonymous clients -------------------------------------------------------------------------------------------
# Without API keys a client's sessions carry its tag, "c" + 16 hex digits (service/security/clients.py), where a
# key's principal ("k" + 16 hex digits) would be: counted per client like a key, but reachable by any anonymous caller.
CLIENT_TAG_PREFIX = "c"


def is_client_tag(owner: str) -> bool:
    """True for an anonymous client's tag, with or without a model version's tag after it."""
    base = owner.partition(TAG_SEPARATOR)[0]
    return len(base) == 17 and base.startswith(CLIENT_TAG_PREFIX) and all(c in "0123456789abcdef" for c in base[1:])
