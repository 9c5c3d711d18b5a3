from pathlib import Path

import pytest

from service.security.keys import ANONYMOUS, InvalidKeyFile, KeyRing, bearer_token, hash_key


def test_no_keys_means_everyone_is_anonymous() -> None:
    ring = KeyRing.from_settings([], None)
    assert not ring.enabled and ring.authenticate(None) == ANONYMOUS


def test_keys_authenticate_to_distinct_stable_principals() -> None:
    ring = KeyRing.from_settings(["alpha-key", "beta-key"], None)
    a, b = ring.authenticate("alpha-key"), ring.authenticate("beta-key")
    assert a and b and a != b and a == ring.authenticate("alpha-key")
    assert "alpha" not in a
    assert ring.authenticate("wrong") is None and ring.authenticate(None) is None and ring.authenticate("") is None


def test_hashed_key_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# team keys\nalice {hash_key('s3cret')}\n\n{hash_key('other')}  # ci\n")
    ring = KeyRing.from_settings([], f)
    assert len(ring) == 2 and ring.authenticate("s3cret") and ring.authenticate("other")
    assert ring.authenticate("sha256:" + "0" * 64) is None
    assert KeyRing.from_settings(["s3cret"], f).authenticate("s3cret") == ring.authenticate("s3cret")


@pytest.mark.parametrize("line", ["plain-key", "sha256:abc", "sha256:" + "zz" * 32])
def test_malformed_key_file_is_refused(tmp_path: Path, line: str) -> None:
    f = tmp_path / "keys"
    f.write_text(line + "\n")
    with pytest.raises(InvalidKeyFile, match=":1:"):
        KeyRing.from_settings([], f)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
        ("", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
