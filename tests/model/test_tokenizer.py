import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.tokenizer import CharTokenizer, InvalidTokenIdError, UnknownCharacterError
from tests.factories import TEST_VOCAB

TOK = CharTokenizer(sorted(TEST_VOCAB))


def test_vocabulary_is_built_from_text_in_sorted_order() -> None:
    tok = CharTokenizer.from_text("banana")
    assert tok.chars == ("a", "b", "n")
    assert tok.encode("nab").tolist() == [2, 0, 1]


@given(st.text(alphabet=TEST_VOCAB, max_size=200))
def test_round_trip(text: str) -> None:
    ids = TOK.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert TOK.decode(ids.tolist()) == text


def test_unknown_character_is_named_with_its_position() -> None:
    with pytest.raises(UnknownCharacterError) as err:
        TOK.encode("To be, or not\tto be")
    assert err.value.char == "\t" and err.value.position == 13
    assert "'\\t'" in str(err.value) and "position 13" in str(err.value)


def test_unknown_character_is_never_dropped_even_if_rare() -> None:
    with pytest.raises(UnknownCharacterError) as err:
        TOK.encode("café")
    assert (err.value.char, err.value.position) == ("é", 3)


def test_token_ids_are_checked() -> None:
    assert TOK.check_ids([0, 5]).tolist() == [0, 5]
    with pytest.raises(InvalidTokenIdError) as err:
        TOK.check_ids([1, TOK.vocab_size])
    assert err.value.position == 1
    with pytest.raises(InvalidTokenIdError):
        TOK.check_ids([-1])


def test_json_round_trip_keeps_order() -> None:
    assert CharTokenizer.from_json(TOK.to_json()).chars == TOK.chars


def test_vocabulary_must_be_distinct_characters() -> None:
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError):
        CharTokenizer(["ab"])
