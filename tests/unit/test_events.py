import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.events import (
    Change,
    ChangeType,
    EventDecodeError,
    TokenRef,
    TokenStateChanged,
    decode_event,
    encode_event,
    encode_key,
)
from shared.tokens import fingerprint, generate_token, new_token_id

GOLDEN = Path(__file__).parent.parent / "golden"


def _ref(slot: int, valid_until: datetime | None = None) -> TokenRef:
    return TokenRef(
        slot=slot, token_id=new_token_id(), fingerprint=fingerprint(generate_token()), valid_until=valid_until
    )


def make_event(generation: int = 1, **overrides: object) -> TokenStateChanged:
    fields: dict[str, object] = {
        "environment_id": "acme-telemetry-prod",
        "org": "acme",
        "project": "telemetry",
        "environment": "prod",
        "generation": generation,
        "tokens": (_ref(1), _ref(2)),
        "change": Change(type=ChangeType.CREATED, actor="pat:alice", at=datetime.now(UTC)),
    }
    fields.update(overrides)
    return TokenStateChanged.model_validate(fields)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("v1_*.json")), ids=lambda p: p.stem)
def test_golden_payloads_keep_decoding_and_round_trip(path: Path) -> None:
    raw = path.read_bytes()
    event = decode_event(raw)
    assert event is not None
    assert event.schema_version == 1
    assert decode_event(encode_event(event)) == event


def test_golden_grace_payload_keeps_the_outgoing_token_until_its_time() -> None:
    event = decode_event((GOLDEN / "v1_rotated_with_grace.json").read_bytes())
    assert event is not None
    before = datetime(2026, 11, 1, 11, 1, tzinfo=UTC)
    after = datetime(2026, 11, 1, 11, 6, tzinfo=UTC)
    assert len(event.active_tokens(before)) == 3
    assert {t.slot for t in event.active_tokens(after)} == {1, 2}
    assert len(event.active_tokens(after)) == 2


def test_round_trip_of_a_fresh_event() -> None:
    event = make_event(generation=3)
    assert decode_event(encode_event(event)) == event
    assert encode_key(event.environment_id) == b"acme-telemetry-prod"


def test_tombstone_decodes_to_none() -> None:
    assert decode_event(None) is None


def test_unknown_field_is_a_clear_error() -> None:
    data = json.loads((GOLDEN / "v1_created.json").read_text())
    data["token"] = "stk_leak"
    with pytest.raises(EventDecodeError, match="token"):
        decode_event(json.dumps(data))


def test_unknown_schema_version_says_to_upgrade() -> None:
    data = json.loads((GOLDEN / "v1_created.json").read_text())
    data["schema_version"] = 2
    with pytest.raises(EventDecodeError, match="upgrade"):
        decode_event(json.dumps(data))


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b'{"schema_version": 1}'])
def test_garbage_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(raw)


def test_an_event_must_hold_one_current_token_per_slot() -> None:
    with pytest.raises(ValueError, match="exactly one current Token 1"):
        make_event(tokens=(_ref(1), _ref(1)))
    with pytest.raises(ValueError, match="exactly one current Token 1"):
        make_event(tokens=(_ref(2),))


def test_only_an_outgoing_token_1_may_have_a_grace_period() -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    make_event(tokens=(_ref(1), _ref(2), _ref(1, later)))
    with pytest.raises(ValueError, match="outgoing Token 1"):
        make_event(tokens=(_ref(1), _ref(2), _ref(2, later)))


def test_generation_starts_at_one() -> None:
    with pytest.raises(ValueError, match="generation"):
        make_event(generation=0)
