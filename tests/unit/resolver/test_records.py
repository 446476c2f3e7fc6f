from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.resolver.records import RecordError, decode_record
from services.resolver.table import tokens_of
from shared.events import encode_event
from tests.unit.resolver.factories import Env


def test_fast_path_matches_the_shared_model() -> None:
    env = Env("a-b-c")
    env.event()
    event = env.rotate(grace_until=datetime.now(UTC) + timedelta(minutes=5))
    decoded = decode_record(b"a-b-c", encode_event(event))
    assert decoded.environment_id == "a-b-c"
    assert decoded.generation == 2
    assert decoded.tokens == tokens_of(event)


def test_tombstone() -> None:
    assert decode_record(b"a-b-c", None).generation is None


def test_key_must_match_environment_id() -> None:
    with pytest.raises(RecordError, match="differs"):
        decode_record(b"other", encode_event(Env("a-b-c").event()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema_version=2),
        lambda d: d.update(generation=0),
        lambda d: d["tokens"].pop(),
        lambda d: d["tokens"][0].update(fingerprint="XYZ"),
        lambda d: d.update(extra=1),
    ],
)
def test_invalid_records_are_refused_with_the_shared_models_verdict(mutate: Callable[[Any], object]) -> None:
    data = json.loads(encode_event(Env("a-b-c").event()))
    mutate(data)
    with pytest.raises(RecordError):
        decode_record(b"a-b-c", json.dumps(data).encode())


def test_not_json_and_missing_key() -> None:
    with pytest.raises(RecordError):
        decode_record(b"a-b-c", b"{nope")
    with pytest.raises(RecordError, match="key"):
        decode_record(None, b"{}")
