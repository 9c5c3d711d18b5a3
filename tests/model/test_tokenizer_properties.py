"""Property tests of the tokenizer on arbitrary vocabularies and arbitrary text: what it encodes decodes back, and
what it cannot encode is refused naming the first bad character and its position (never dropped, never mapped)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.tokenizer import CharTokenizer, InvalidTokenIdError, UnknownCharacterError

# Every code point, lone surrogates, NUL and combining marks included: the error message must be buildable for
# any of them, since it is what the API sends back.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
PROPERTIES = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@st.composite
def vocabularies(draw: st.DrawFn) -> CharTokenizer:
    """A tokenizer over 1..40 distinct arbitrary characters, in an arbitrary (not only sorted) order."""
    chars = draw(st.lists(ANY_CHAR, min_size=1, max_size=40, unique=True))
    return CharTokenizer(chars)


@st.composite
def vocab_and_text(draw: st.DrawFn) -> tuple[CharTokenizer, str]:
    tok = draw(vocabularies())
    return tok, draw(st.text(alphabet=st.sampled_from(tok.chars), max_size=100))


@PROPERTIES
@given(vocab_and_text())
def test_any_text_of_the_vocabulary_round_trips(case: tuple[CharTokenizer, str]) -> None:
    tok, text = case
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert all(0 <= i < tok.vocab_size for i in ids.tolist())
    assert tok.decode(ids.tolist()) == text
    np.testing.assert_array_equal(tok.check_ids(ids.tolist()), ids)  # encoded ids always pass the id check


@PROPERTIES
@given(vocabularies(), st.data())
def test_any_valid_ids_round_trip_through_text(tok: CharTokenizer, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=60))
    assert tok.encode(tok.decode(ids)).tolist() == ids


@PROPERTIES
@given(vocabularies(), st.data())
def test_an_unknown_character_is_named_with_its_position(tok: CharTokenizer, data: st.DataObject) -> None:
    known = st.sampled_from(tok.chars)
    prefix = data.draw(st.text(alphabet=known, max_size=30), label="prefix")
    bad = data.draw(ANY_CHAR.filter(lambda c: c not in tok.chars), label="bad")
    suffix = data.draw(st.text(alphabet=ANY_CHAR, max_size=30), label="suffix")  # may hold more bad characters
    with pytest.raises(UnknownCharacterError) as err:
        tok.encode(prefix + bad + suffix)
    assert (err.value.char, err.value.position) == (bad, len(prefix))  # the first bad one, never a later one
    message = str(err.value)
    assert repr(bad) in message and f"U+{ord(bad):04X}" in message and f"position {len(prefix)}" in message
    assert isinstance(err.value, ValueError)


@PROPERTIES
@given(vocabularies(), st.lists(st.integers(-(2**70), 2**70) | st.integers(-3, 45), max_size=20))
def test_any_ids_pass_or_name_the_first_bad_one(tok: CharTokenizer, ids: list[int]) -> None:
    bad = [pos for pos, t in enumerate(ids) if not 0 <= t < tok.vocab_size]
    if not bad:
        assert tok.check_ids(ids).tolist() == ids
        return
    with pytest.raises(InvalidTokenIdError) as err:
        tok.check_ids(ids)
    assert (err.value.position, err.value.token_id) == (bad[0], ids[bad[0]])
    assert str(ids[bad[0]]) in str(err.value) and f"[0, {tok.vocab_size})" in str(err.value)


@PROPERTIES
@given(vocabularies())
def test_any_vocabulary_survives_its_json_form(tok: CharTokenizer) -> None:
    assert CharTokenizer.from_json(tok.to_json()).chars == tok.chars
