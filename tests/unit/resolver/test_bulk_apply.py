"""The replay's bulk path (``fast_records`` + ``TokenTable.apply_pairs``) builds exactly the table the
one-record-at-a-time path builds, for canonical and for every kind of odd record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.resolver.metrics import ResolverMetrics
from services.resolver.records import RecordError, decode_record, fast_records
from services.resolver.replica import Status, TableReplica
from services.resolver.table import TokenTable
from shared.events import encode_event
from shared.kafka import KafkaSettings
from tests.unit.resolver.factories import Env


class FakeMessage:
    """The part of a confluent-kafka ``Message`` the replica reads."""

    def __init__(self, key: bytes | None, value: bytes | None, offset: int, error: str | None = None) -> None:
        self._key, self._value, self._offset, self._error = key, value, offset, error

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> str | None:
        return self._error

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000 + self._offset  # TIMESTAMP_CREATE_TIME, milliseconds


def _edit(value: bytes, change: object) -> bytes:
    data = json.loads(value)
    if callable(change):
        change(data)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _records() -> list[tuple[bytes | None, bytes | None]]:
    """Canonical records mixed with everything the fast path must leave to the slow one."""
    envs = [Env(f"org{i}-proj-env{i}") for i in range(12)]
    out: list[tuple[bytes | None, bytes | None]] = []
    for env in envs:
        out.append((env.environment_id.encode(), encode_event(env.event())))
    first = envs[0]
    rotated = encode_event(first.rotate())
    out.append((first.environment_id.encode(), rotated))
    out.append((first.environment_id.encode(), rotated))  # equal generation: stale
    grace = envs[1]
    out.append((grace.environment_id.encode(), encode_event(grace.rotate(datetime.now(UTC) + timedelta(1)))))
    out.append((envs[2].environment_id.encode(), None))  # tombstone
    out.append((b"never-seen", None))
    out.append((None, encode_event(envs[3].event())))  # no key
    out.append((b"other-key", encode_event(envs[4].event())))  # key differs
    bumped = envs[5]
    bumped.generation += 1
    canonical = encode_event(bumped.event())
    out.append((bumped.environment_id.encode(), canonical.replace(b",", b", ")))  # whitespace: still valid
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(schema_version=2))))
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(generation=0))))
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(extra=1))))
    upper = _edit(
        canonical, lambda d: d["tokens"][0].update(fingerprint=d["tokens"][0]["fingerprint"].upper())
    )
    out.append((bumped.environment_id.encode(), upper))
    same = _edit(canonical, lambda d: d["tokens"][1].update(fingerprint=d["tokens"][0]["fingerprint"]))
    out.append((bumped.environment_id.encode(), same))
    out.append(
        (bumped.environment_id.encode(), _edit(canonical, lambda d: d["change"].update(at="yesterday")))
    )
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(generation=1 << 70))))
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(org="Zürich"))))
    out.append((bumped.environment_id.encode(), _edit(canonical, lambda d: d.update(org="a\nb"))))
    out.append((bumped.environment_id.encode(), canonical.replace(b'"org":"', b'"org":"\x07')))  # raw control
    out.append((bumped.environment_id.encode(), b"{nope"))
    escaped = Env("esc\\aped-proj-env")
    out.append((escaped.environment_id.encode(), encode_event(escaped.event())))
    unicode = Env("orgé-proj-env")
    out.append((unicode.environment_id.encode(), encode_event(unicode.event())))
    return out


def _replica(status: Status) -> TableReplica:
    replica = TableReplica(TokenTable(), KafkaSettings(bootstrap_servers="127.0.0.1:9"), ResolverMetrics())
    replica.status = status
    return replica


def _tables(records: list[tuple[bytes | None, bytes | None]]) -> tuple[TableReplica, TableReplica]:
    messages = [FakeMessage(key, value, offset) for offset, (key, value) in enumerate(records)]
    bulk, single = _replica(Status.LOADING), _replica(Status.READY)
    bulk._apply(messages)
    single._apply(messages)
    return bulk, single


def _counts(replica: TableReplica) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for metric in replica.metrics.records.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def test_bulk_and_one_by_one_build_the_same_table() -> None:
    bulk, single = _tables(_records())
    assert sorted(bulk.table.environments(), key=repr) == sorted(single.table.environments(), key=repr)
    assert bulk.table.fingerprint_count == single.table.fingerprint_count
    assert _counts(bulk) == _counts(single)
    assert _counts(bulk)["invalid"] == 9
    assert bulk.records_read == single.records_read == len(_records())


def test_a_nul_byte_sends_the_whole_batch_the_slow_way() -> None:
    records = _records()
    records.insert(3, (b"nul\x00key", b"{}"))
    bulk, single = _tables(records)
    assert sorted(bulk.table.environments(), key=repr) == sorted(single.table.environments(), key=repr)
    assert fast_records([key for key, _ in records], [value for _, value in records]) is None


def test_fast_records_agree_with_decode_record() -> None:
    records = _records()
    found = fast_records([key for key, _ in records], [value for _, value in records])
    assert found is not None
    taken = 0
    for (key, value), fast in zip(records, found, strict=True):
        if not fast[0]:
            continue
        taken += 1
        environment, generation, id_1, fp_1, id_2, fp_2 = fast
        if fp_1 == fp_2:  # left to the table, which refuses it (see above)
            with pytest.raises(RecordError, match="distinct"):
                decode_record(key, value)
            continue
        environment_id, decoded_generation, tokens = decode_record(key, value)
        assert (environment.decode(), int(generation)) == (environment_id, decoded_generation)
        assert ((1, id_1.decode(), fp_1.decode(), None), (2, id_2.decode(), fp_2.decode(), None)) == tuple(
            tokens
        )
    assert taken >= 14  # the canonical ones (and the uppercase one, which the table refuses)
