from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.resolver.table import Match, TokenRef, TokenTable, tokens_of
from shared.tokens import fingerprint
from tests.unit.resolver.factories import Env

NOW = time.time()


def _fp(token: str) -> str:
    return fingerprint(token)


def test_created_environment_resolves_both_slots() -> None:
    table, env = TokenTable(), Env("acme-telemetry-prod")
    result = table.apply_event(env.environment_id, env.event())
    assert result.applied
    assert result.reason == "new"
    assert table.lookup(_fp(env.token_1), NOW) == Match("acme-telemetry-prod", 1, env.id_1, 1)
    assert table.lookup(_fp(env.token_2), NOW) == Match("acme-telemetry-prod", 2, env.id_2, 1)
    assert len(table) == 1
    assert table.fingerprint_count == 2


def test_unknown_and_malformed_fingerprints_miss() -> None:
    table, env = TokenTable(), Env("a-b-c")
    table.apply_event(env.environment_id, env.event())
    assert table.lookup(_fp("stk_nope"), NOW) is None
    assert table.lookup("zz", NOW) is None
    assert table.lookup("ab" * 31, NOW) is None


def test_rotation_deactivates_old_token_1_and_promotes_token_2() -> None:
    table, env = TokenTable(), Env("a-b-c")
    table.apply_event(env.environment_id, env.event())
    old_1, old_2 = env.token_1, env.token_2
    table.apply_event(env.environment_id, env.rotate())
    assert table.lookup(_fp(old_1), NOW) is None
    promoted = table.lookup(_fp(old_2), NOW)
    assert promoted is not None
    assert promoted.slot == 1
    assert promoted.generation == 2
    assert table.lookup(_fp(env.token_2), NOW) == Match("a-b-c", 2, env.id_2, 2)
    assert table.fingerprint_count == 2


def test_older_or_equal_generation_is_ignored() -> None:
    table, env = TokenTable(), Env("a-b-c")
    first = env.event()
    table.apply_event(env.environment_id, first)
    second = env.rotate()
    assert table.apply_event(env.environment_id, second).applied
    assert table.apply_event(env.environment_id, first).reason == "stale"
    assert table.apply_event(env.environment_id, second).reason == "stale"
    assert table.generation("a-b-c") == 2
    assert table.lookup(_fp(env.token_1), NOW) is not None


def test_tombstone_removes_the_environment_and_it_can_come_back() -> None:
    table, env = TokenTable(), Env("a-b-c")
    table.apply_event(env.environment_id, env.event())
    assert table.apply_event(env.environment_id, None).reason == "deleted"
    assert table.lookup(_fp(env.token_1), NOW) is None
    assert len(table) == 0
    assert table.fingerprint_count == 0
    assert table.apply_event(env.environment_id, None).reason == "unknown_deleted"
    again = Env("a-b-c")
    assert table.apply_event(again.environment_id, again.event()).applied


def test_grace_period_token_stops_matching_at_its_time() -> None:
    table, env = TokenTable(), Env("a-b-c")
    table.apply_event(env.environment_id, env.event())
    old = env.token_1
    until = datetime.now(UTC) + timedelta(seconds=60)
    table.apply_event(env.environment_id, env.rotate(grace_until=until))
    outgoing = table.lookup(_fp(old), until.timestamp() - 1)
    assert outgoing is not None
    assert outgoing.slot == 1
    assert outgoing.token_id != env.id_1
    assert table.lookup(_fp(old), until.timestamp()) is None
    assert table.purge_expired(until.timestamp() - 1) == 0
    assert table.purge_expired(until.timestamp() + 1) == 1
    assert table.fingerprint_count == 2
    assert table.lookup(_fp(env.token_1), NOW) is not None


def test_environment_state_round_trips() -> None:
    table, env = TokenTable(), Env("a-b-c")
    event = env.rotate(grace_until=datetime.now(UTC) + timedelta(seconds=5))
    table.apply_event(env.environment_id, event)
    state = table.environment("a-b-c")
    assert state is not None
    assert state.generation == 2
    assert set(state.tokens) == set(tokens_of(event))
    assert [s.environment_id for s in table.environments()] == ["a-b-c"]


def test_prefix_collision_never_authenticates_a_different_digest() -> None:
    table = TokenTable()
    fp_a = "11" * 8 + "aa" * 24
    fp_b = "11" * 8 + "bb" * 24
    table.apply("env-a", 1, (TokenRef(1, "t1", fp_a), TokenRef(2, "t2", "22" * 32)))
    table.apply("env-b", 1, (TokenRef(1, "t3", fp_b), TokenRef(2, "t4", "33" * 32)))
    assert table.lookup(fp_a, NOW) == Match("env-a", 1, "t1", 1)
    assert table.lookup(fp_b, NOW) == Match("env-b", 1, "t3", 1)
    assert table.lookup("11" * 8 + "cc" * 24, NOW) is None
    table.apply("env-a", None)
    assert table.lookup(fp_a, NOW) is None
    assert table.lookup(fp_b, NOW) == Match("env-b", 1, "t3", 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=40))
def test_table_equals_a_model_of_newest_generation_wins(ops: list[tuple[int, int]]) -> None:
    """Random creates/updates/tombstones: the table answers exactly like a naive dict model."""
    table = TokenTable()
    model: dict[str, tuple[int, tuple[TokenRef, ...]]] = {}
    for env_n, generation in ops:
        env = f"e{env_n}"
        if generation == 0:
            table.apply(env, None)
            model.pop(env, None)
            continue
        tokens = (
            TokenRef(1, f"{env}-{generation}-1", _fp(f"{env}-{generation}-1")),
            TokenRef(2, f"{env}-{generation}-2", _fp(f"{env}-{generation}-2")),
        )
        table.apply(env, generation, tokens)
        if env not in model or model[env][0] < generation:
            model[env] = (generation, tokens)
    expected = {
        t.fingerprint: Match(env, t.slot, t.token_id, gen) for env, (gen, toks) in model.items() for t in toks
    }
    assert table.fingerprint_count == len(expected)
    for env_n in range(4):
        for generation in range(1, 5):
            for slot in (1, 2):
                fp = _fp(f"e{env_n}-{generation}-{slot}")
                assert table.lookup(fp, NOW) == expected.get(fp)


def _colliding_fingerprint(n: int) -> str:
    """Fingerprints that share their first 64 bits in groups of four and their low bits across groups,
    so the hash tables see long probe runs, equal keys and wrap-around at the end of the table."""
    return ("ab" * 8 if n % 4 else f"{n % 16:02x}" * 8) + f"{n:048x}"


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 11), st.integers(0, 6), st.integers(0, 40), st.integers(0, 40), st.booleans()
        ),
        max_size=80,
    )
)
def test_hash_tables_with_colliding_fingerprints_equal_a_model(
    ops: list[tuple[int, int, int, int, bool]],
) -> None:
    """Creates, replacements, stale records and tombstones through ``apply`` and the bulk ``apply_pairs``,
    with fingerprints chosen to collide: every lookup answers exactly like a naive dict model, and a
    shared 64-bit prefix never authenticates the other token."""
    table = TokenTable()  # the smallest hash tables: the test also grows them
    model: dict[str, tuple[int, str, str]] = {}
    for env_n, generation, a, b, bulk in ops:
        env = f"env-{env_n}"
        if generation == 0:
            table.apply(env, None)
            model.pop(env, None)
            continue
        if a == b:
            b = (a + 1) % 41
        fp_1, fp_2 = _colliding_fingerprint(a), _colliding_fingerprint(b)
        if bulk:
            record = (env.encode(), str(generation).encode(), b"t1", fp_1.encode(), b"t2", fp_2.encode())
            stop, new, replaced, stale = table.apply_pairs([record])
            assert stop == 1
            assert new + replaced + stale == 1
        else:
            table.apply(env, generation, ((1, "t1", fp_1, None), (2, "t2", fp_2, None)))
        if env not in model or model[env][0] < generation:
            model[env] = (generation, fp_1, fp_2)
    expected: dict[str, list[Match]] = {}
    for env, (generation, fp_1, fp_2) in model.items():
        expected.setdefault(fp_1, []).append(Match(env, 1, "t1", generation))
        expected.setdefault(fp_2, []).append(Match(env, 2, "t2", generation))
    assert len(table) == len(model)
    assert table.fingerprint_count == 2 * len(model)
    for n in range(41):
        fp = _colliding_fingerprint(n)
        match = table.lookup(fp, NOW)
        if fp in expected:
            assert match in expected[fp]  # two environments may hold the same fingerprint in this model
        else:
            assert match is None
    assert {s.environment_id: s.generation for s in table.environments()} == {
        env: generation for env, (generation, _, _) in model.items()
    }


def test_bulk_records_it_does_not_take_stop_the_batch() -> None:
    table = TokenTable()
    good = (b"a-b-c", b"1", b"t1", b"1" * 64, b"t2", b"2" * 64)
    records = [
        good,
        (b"", b"", b"", b"", b"", b""),  # the decoder left it to the slow path
        (b"d-e-f", b"1", b"t1", b"A" * 64, b"t2", b"2" * 64),  # uppercase hex
        (b"d-e-f", b"1", b"t1", b"3" * 64, b"t2", b"3" * 64),  # equal fingerprints
        (b"d-e-f", str(1 << 64).encode(), b"t1", b"3" * 64, b"t2", b"4" * 64),  # generation too large
        (b"d-e-f", b"1", b"t" * 300, b"3" * 64, b"t2", b"4" * 64),  # token id too long
        good,
    ]
    assert table.apply_pairs(records) == (1, 1, 0, 0)
    for start in range(1, 6):
        assert table.apply_pairs(records, start) == (start, 0, 0, 0)
    assert table.apply_pairs(records, 6) == (7, 0, 0, 1)
    assert len(table) == 1
    assert table.lookup("1" * 64, NOW) == Match("a-b-c", 1, "t1", 1)


def test_reserve_and_growth_keep_every_entry() -> None:
    table = TokenTable()
    table.reserve(10)
    for i in range(500):
        table.apply(f"e{i}", 1, ((1, f"a{i}", _fp(f"a{i}"), None), (2, f"b{i}", _fp(f"b{i}"), None)))
    for i in range(0, 500, 2):
        table.apply(f"e{i}", None)
    assert len(table) == 250
    assert table.fingerprint_count == 500
    for i in range(500):
        expected = None if i % 2 == 0 else Match(f"e{i}", 2, f"b{i}", 1)
        assert table.lookup(_fp(f"b{i}"), NOW) == expected
