import hashlib

from hypothesis import given
from hypothesis import strategies as st

from shared.tokens import (
    TOKEN_LENGTH,
    TOKEN_PREFIX,
    fingerprint,
    generate_token,
    is_well_formed,
    new_token_id,
    redact,
)


def test_generated_tokens_are_well_formed_prefixed_and_distinct() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert len(token) == TOKEN_LENGTH
        assert is_well_formed(token)


def test_a_single_typo_fails_the_checksum_without_a_lookup() -> None:
    token = generate_token()
    position = len(TOKEN_PREFIX) + 10
    replacement = "A" if token[position] != "A" else "B"
    typo = token[:position] + replacement + token[position + 1 :]
    assert not is_well_formed(typo)


def test_truncated_foreign_and_empty_tokens_are_refused() -> None:
    token = generate_token()
    for bad in (
        "",
        token[:-1],
        token + "x",
        "ghp_" + token[4:],
        token.replace("stk_", "STK_"),
        "stk_" + "!" * 49,
    ):
        assert not is_well_formed(bad)


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_validation(text: str) -> None:
    assert is_well_formed(text) in (True, False)


def test_fingerprint_is_sha256_hex() -> None:
    token = generate_token()
    assert fingerprint(token) == hashlib.sha256(token.encode()).hexdigest()
    assert len(fingerprint(token)) == 64


def test_token_ids_are_public_and_never_look_like_tokens() -> None:
    token_id = new_token_id()
    assert token_id.startswith("tid_")
    assert not is_well_formed(token_id)


def test_redact_shows_only_the_prefix() -> None:
    token = generate_token()
    assert redact(token) == "stk_…"
    assert token[5:15] not in redact(token)
