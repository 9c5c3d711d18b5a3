"""API keys: who is calling. Keys are kept only as SHA-256 digests and compared in constant time.

A key's *principal* is a short, stable, non-secret tag derived from its digest; sessions are namespaced by it, so
one key can never reach another key's sessions. Without configured keys every caller is the same principal.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

ANONYMOUS = "anon"


class InvalidKeyFile(ValueError):
    """The hashed-keys file has a line that is not `sha256:<64 hex>` (optionally after `name `)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_key(key: str) -> str:
    """The line to put in a keys file for `key`: never store the key itself."""
    return "sha256:" + digest(key).hex()


def principal_of(key_digest: bytes) -> str:
    # 64 bits of the digest: unique enough to namespace sessions, useless for recovering the key.
    return "k" + key_digest[:8].hex()


class KeyRing:
    """The accepted keys, as digests. Empty: authentication is off."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self._digests = tuple(dict.fromkeys(digests))

    @classmethod
    def from_settings(cls, keys: Iterable[str], key_file: Path | None) -> KeyRing:
        digests = [digest(k) for k in keys if k]
        if key_file is not None:
            digests += list(read_key_file(key_file))
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def authenticate(self, presented: str | None) -> str | None:
        """The caller's principal, or None when the key is missing or wrong (or ANONYMOUS when auth is off)."""
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            return None
        candidate = digest(presented)
        match: bytes | None = None
        for known in self._digests:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(candidate, known):
                match = known
        return principal_of(match) if match is not None else None


def read_key_file(path: Path) -> Iterable[bytes]:
    """Lines `sha256:<hex>` or `<name> sha256:<hex>`; blank lines and `#` comments are skipped."""
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        value = line.split()[-1]
        if not value.startswith("sha256:") or len(value) != 7 + 64:
            raise InvalidKeyFile(f"{path}:{number}: expected 'sha256:<64 hex digits>'")
        try:
            yield bytes.fromhex(value[7:])
        except ValueError:
            raise InvalidKeyFile(f"{path}:{number}: not hexadecimal") from None


def bearer_token(authorization: str | None) -> str | None:
    """The key from an `Authorization: Bearer <key>` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
