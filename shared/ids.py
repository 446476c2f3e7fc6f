"""Environment-id and topic-id rules.

An environment id is ``{org}-{project}-{environment}``; a topic id is ``{environment_id}-{name}``. Kafka
limits a topic name to 249 characters of ``[a-zA-Z0-9._-]``, so each slug part is bounded and the room left
for topic names is known in advance.
"""

from __future__ import annotations

import re

from shared.tokens import TOKEN_PATTERN

SLUG_MAX = 32
ENVIRONMENT_ID_MAX = 3 * SLUG_MAX + 2
KAFKA_TOPIC_MAX = 249
# Whole-string patterns, matched with re.fullmatch (``$`` would accept a trailing newline) and published in
# the OpenAPI documents as ``^...$`` (JSON Schema regexes have no such newline exception).
SLUG_PATTERN = r"[a-z0-9]+(?:-[a-z0-9]+)*"  # and at most SLUG_MAX characters
ENVIRONMENT_ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
KAFKA_TOPIC_PATTERN = r"[a-zA-Z0-9._-]+"
_SLUG = re.compile(SLUG_PATTERN)
_ENVIRONMENT_ID = re.compile(ENVIRONMENT_ID_PATTERN)
_KAFKA_TOPIC = re.compile(KAFKA_TOPIC_PATTERN)


def _shown(value: str, limit: int = 40) -> str:
    """How a rejected value is quoted in a message: token-shaped parts redacted first, then shortened."""
    return repr(TOKEN_PATTERN.sub("stk_[REDACTED]", value)[:limit])


class InvalidIdentifier(ValueError):
    """An org, project, environment, environment id or topic name breaks the rules; the message says how."""


def validate_slug(kind: str, value: str) -> str:
    if len(value) > SLUG_MAX or not _SLUG.fullmatch(value):
        raise InvalidIdentifier(
            f"{kind} {_shown(value)} is not a valid slug: use 1-{SLUG_MAX} lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )
    return value


def environment_id(org: str, project: str, environment: str) -> str:
    """The environment id ``{org}-{project}-{environment}``, after validating each part."""
    return "-".join(
        (
            validate_slug("org", org),
            validate_slug("project", project),
            validate_slug("environment", environment),
        )
    )


def validate_environment_id(value: str) -> str:
    if len(value) > ENVIRONMENT_ID_MAX or not _ENVIRONMENT_ID.fullmatch(value):
        raise InvalidIdentifier(
            f"environment id {_shown(value, 80)} is not valid: expected "
            f"'{{org}}-{{project}}-{{environment}}' of lowercase letters, digits and hyphens, at most "
            f"{ENVIRONMENT_ID_MAX} characters"
        )
    return value


def validate_topic_name(name: str) -> str:
    if not name or name in {".", ".."} or not _KAFKA_TOPIC.fullmatch(name):
        raise InvalidIdentifier(
            f"topic name {_shown(name, 80)} is not a legal Kafka topic name: use letters, digits, '.', '_' "
            "and '-'"
        )
    if TOKEN_PATTERN.search(name):
        raise InvalidIdentifier("a topic name must not contain a streaming token (stk_...)")
    return name


def topic_id(environment_id: str, name: str) -> str:
    """The Kafka topic id of topic ``name`` in an environment.

    A name that already carries the environment prefix is accepted as the id itself, as the Quix Portal
    API does. Raises :class:`InvalidIdentifier` for an illegal name or an id over Kafka's 249 characters.
    """
    validate_topic_name(name)
    prefix = f"{environment_id}-"
    full = name if name.startswith(prefix) and len(name) > len(prefix) else prefix + name
    if len(full) > KAFKA_TOPIC_MAX:
        raise InvalidIdentifier(
            f"topic id for {_shown(name)} would be {len(full)} characters; Kafka allows at most "
            f"{KAFKA_TOPIC_MAX}, so the name may have at most {KAFKA_TOPIC_MAX - len(prefix)}"
        )
    return full


def hyphen_prefixes(value: str) -> list[str]:
    """Every prefix of ``value`` that ends before one of its hyphens: ``a-b-c`` → ``a``, ``a-b``.

    Environment ids must not nest (one must never be such a prefix of another): otherwise the topics of
    ``a-b-c`` (``a-b-c-…``) would also look like topics of ``a-b``.
    """
    return [value[:i] for i, char in enumerate(value) if char == "-"]


def short_name(environment_id: str, topic: str) -> str:
    """The short name of a topic id of this environment (the id itself if it lacks the prefix)."""
    prefix = f"{environment_id}-"
    return topic[len(prefix) :] if topic.startswith(prefix) else topic
