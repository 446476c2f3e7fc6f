import pytest

from shared.ids import (
    ENVIRONMENT_ID_MAX,
    KAFKA_TOPIC_MAX,
    InvalidIdentifier,
    environment_id,
    short_name,
    topic_id,
    validate_environment_id,
)


def test_environment_id_joins_the_slugs() -> None:
    assert environment_id("acme", "telemetry", "prod") == "acme-telemetry-prod"


@pytest.mark.parametrize("bad", ["", "Acme", "a_b", "-a", "a-", "a--b", "a" * 33, "ü", "a b", "a/b"])
def test_bad_slugs_are_refused_with_a_message(bad: str) -> None:
    with pytest.raises(InvalidIdentifier, match="not a valid slug"):
        environment_id(bad, "p", "e")


def test_longest_environment_id_leaves_room_for_topic_names() -> None:
    longest = environment_id("a" * 32, "b" * 32, "c" * 32)
    assert len(longest) == ENVIRONMENT_ID_MAX
    assert len(topic_id(longest, "x" * (KAFKA_TOPIC_MAX - ENVIRONMENT_ID_MAX - 1))) == KAFKA_TOPIC_MAX


def test_topic_id_is_prefixed_and_an_already_prefixed_id_is_accepted() -> None:
    assert topic_id("acme-telemetry-prod", "f1-data") == "acme-telemetry-prod-f1-data"
    assert topic_id("acme-telemetry-prod", "acme-telemetry-prod-f1-data") == "acme-telemetry-prod-f1-data"
    assert short_name("acme-telemetry-prod", "acme-telemetry-prod-f1-data") == "f1-data"


@pytest.mark.parametrize("bad", ["", ".", "..", "a b", "a/b", "ä", "x" * 300, "a:b"])
def test_illegal_topic_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifier):
        topic_id("acme-telemetry-prod", bad)


def test_topic_id_over_249_characters_is_refused_with_the_limit_named() -> None:
    with pytest.raises(InvalidIdentifier, match="249"):
        topic_id("acme-telemetry-prod", "x" * 240)


@pytest.mark.parametrize("bad", ["", "UPPER", "a_b", "-x", "x" * (ENVIRONMENT_ID_MAX + 1)])
def test_invalid_environment_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifier):
        validate_environment_id(bad)


@pytest.mark.parametrize("bad", ["acme\n", "prod\n", "a\nb", "\nacme"])
def test_a_newline_is_refused_everywhere(bad: str) -> None:
    # `re.match(r"^...$")` accepted a trailing newline: "acme\n" made an environment no one could rotate.
    with pytest.raises(InvalidIdentifier):
        environment_id(bad, "telemetry", "prod")
    with pytest.raises(InvalidIdentifier):
        validate_environment_id(f"{bad}-telemetry-prod")
    with pytest.raises(InvalidIdentifier):
        topic_id("acme-telemetry-prod", f"f1-data{bad}")


def test_the_published_patterns_match_the_validators() -> None:
    import re

    from shared.ids import ENVIRONMENT_ID_PATTERN, SLUG_PATTERN

    for value in ["a", "acme", "a-b", "a1-b2-c3"]:
        assert re.fullmatch(SLUG_PATTERN, value)
        assert environment_id(value, "p", "e")
    for value in ["", "-a", "a-", "a--b", "A", "a\n"]:
        assert not re.fullmatch(SLUG_PATTERN, value)
    assert re.fullmatch(ENVIRONMENT_ID_PATTERN, "acme-telemetry-prod")
    assert not re.fullmatch(ENVIRONMENT_ID_PATTERN, "acme-telemetry-prod\n")
