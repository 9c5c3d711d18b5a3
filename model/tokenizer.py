"""Character-level vocabulary: encode/decode and the unknown-character error (no torch)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np


class UnknownCharacterError(ValueError):
    """A character outside the vocabulary; it is never dropped or mapped to something else."""

    def __init__(self, char: str, position: int) -> None:
        self.char = char
        self.position = position
        super().__init__(f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the vocabulary")


class InvalidTokenIdError(ValueError):
    """A token id outside [0, vocab_size)."""

    def __init__(self, token_id: int, position: int, vocab_size: int) -> None:
        self.token_id = token_id
        self.position = position
        super().__init__(f"token id {token_id} at position {position} is outside [0, {vocab_size})")


class CharTokenizer:
    """Maps each character of the training text to an id; ids are in sorted character order."""

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary must be distinct single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: Iterable[str]) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 ids, shape (len(text),). Raises UnknownCharacterError naming the first bad character."""
        index = self._index
        try:
            # map over the dict's own lookup, not a generator: no Python frame per character
            return np.fromiter(map(index.__getitem__, text), dtype=np.int64, count=len(text))
        except KeyError:
            for pos, c in enumerate(text):
                if c not in index:
                    raise UnknownCharacterError(c, pos) from None
            raise

    def check_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Validate raw token ids and return them as int64."""
        for pos, t in enumerate(ids):
            if not 0 <= t < self.vocab_size:
                raise InvalidTokenIdError(int(t), pos, self.vocab_size)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps("".join(self.chars))

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        return cls(list(json.loads(text)))
