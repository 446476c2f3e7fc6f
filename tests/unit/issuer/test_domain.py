"""The domain's invariants, by example and as properties over random command sequences (hypothesis)."""

from __future__ import annotations

import ast
import itertools
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.issuer import domain
from services.issuer.domain import DomainError, Environment
from shared.events import ChangeType, TokenStateChanged, decode_event, encode_event
from shared.tokens import fingerprint, is_well_formed

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def counter_factory() -> domain.TokenFactory:
    numbers = itertools.count(1)

    def make() -> tuple[str, str]:
        n = next(numbers)
        return f"tid_{n:016x}", f"stk_test{n:045d}"

    return make


def new_env(factory: domain.TokenFactory | None = None) -> Environment:
    return domain.create_environment(
        "acme", "telemetry", "prod", actor="pat:alice", now=T0, factory=factory or counter_factory()
    ).after


def test_create_gives_two_distinct_real_tokens() -> None:
    transition = domain.create_environment("acme", "telemetry", "prod", actor="pat:alice", now=T0)
    env = transition.after
    assert env.id == "acme-telemetry-prod"
    assert env.generation == 1
    assert [t.record.slot for t in transition.issued] == [1, 2]
    assert all(is_well_formed(t.value) for t in transition.issued)
    assert [t.record.fingerprint for t in transition.issued] == [
        fingerprint(t.value) for t in transition.issued
    ]
    assert "stk_" not in repr(transition.issued)


def test_rotate_promotes_token_2_and_issues_a_new_one() -> None:
    factory = counter_factory()
    env = new_env(factory)
    transition = domain.rotate(env, actor="pat:alice", now=T0, rotation_id="rot_1", factory=factory)
    after = transition.after
    assert after.generation == 2
    assert after.token_1.token_id == env.token_2.token_id
    assert after.token_1.fingerprint == env.token_2.fingerprint
    assert after.token_2.token_id == transition.issued[0].record.token_id
    assert transition.ended == (env.token_1.token_id,)
    assert after.grace_tokens == ()
    assert after.last_change.type is ChangeType.ROTATED


def test_grace_keeps_the_outgoing_token_1_until_its_time() -> None:
    env = new_env()
    after = domain.rotate(env, actor="a", now=T0, rotation_id="r", grace=timedelta(minutes=5)).after
    (graced,) = after.grace_tokens
    assert graced.token_id == env.token_1.token_id
    assert graced.slot == 1
    assert graced.valid_until == T0 + timedelta(minutes=5)
    assert graced in after.valid_at(T0 + timedelta(minutes=4))
    assert graced not in after.valid_at(T0 + timedelta(minutes=5))
    event = domain.to_event(after)
    assert [t.valid_until for t in event.tokens if t.valid_until] == [T0 + timedelta(minutes=5)]
    # the next rotation after the grace ended drops it
    later = domain.rotate(after, actor="a", now=T0 + timedelta(minutes=6), rotation_id="r2").after
    assert later.grace_tokens == ()


def test_revoke_replaces_both_and_ends_grace() -> None:
    env = new_env()
    graced = domain.rotate(env, actor="a", now=T0, rotation_id="r", grace=timedelta(hours=1)).after
    revoked = domain.revoke(graced, actor="a", now=T0, rotation_id="r2")
    assert revoked.after.generation == 3
    assert revoked.after.grace_tokens == ()
    assert set(revoked.ended) == {t.token_id for t in graced.tokens}
    assert {t.token_id for t in revoked.after.tokens}.isdisjoint(revoked.ended)
    assert revoked.after.last_change.type is ChangeType.REVOKED


def test_delete_ends_every_token() -> None:
    env = domain.rotate(new_env(), actor="a", now=T0, rotation_id="r", grace=timedelta(hours=1)).after
    assert set(domain.delete(env)) == {t.token_id for t in env.tokens}
    assert len(domain.delete(env)) == 3


def test_bad_input_is_refused() -> None:
    env = new_env()
    with pytest.raises(DomainError):
        domain.rotate(env, actor="a", now=T0, rotation_id="r", grace=timedelta(seconds=-1))
    with pytest.raises(DomainError):
        domain.rotate(env, actor="a", now=T0, rotation_id="r", grace=timedelta(days=8))
    with pytest.raises(DomainError):
        domain.rotate(env, actor="a", now=datetime(2026, 1, 1), rotation_id="r")
    with pytest.raises(ValueError, match="slug"):
        domain.create_environment("Acme!", "t", "p", actor="a", now=T0)


def test_recreate_continues_the_generation() -> None:
    env = domain.create_environment("a", "b", "c", actor="x", now=T0, previous_generation=7).after
    assert env.generation == 8


Command = tuple[str, int, int]  # (kind, grace seconds, minutes later)
commands = st.lists(
    st.tuples(
        st.sampled_from(["rotate", "revoke"]),
        st.sampled_from([0, 0, 30, 600, 3600]),
        st.integers(min_value=0, max_value=90),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(commands)
def test_every_command_sequence_keeps_the_invariants(sequence: list[Command]) -> None:
    factory = counter_factory()
    env = new_env(factory)
    now = T0
    for number, (kind, grace, minutes_later) in enumerate(sequence, start=1):
        now = now + timedelta(minutes=minutes_later)
        before = env
        if kind == "rotate":
            transition = domain.rotate(
                env,
                actor="a",
                now=now,
                rotation_id=f"r{number}",
                grace=timedelta(seconds=grace),
                factory=factory,
            )
        else:
            transition = domain.revoke(env, actor="a", now=now, rotation_id=f"r{number}", factory=factory)
        env = transition.after
        domain.check_invariants(env)
        # exactly one current Token 1 and Token 2, generation +1 per change
        assert sorted(t.slot for t in env.tokens if t.is_current) == [1, 2]
        assert env.generation == before.generation + 1
        # only outgoing Token 1s are in grace, and only until a future time
        assert all(t.slot == 1 and t.valid_until and t.valid_until > now for t in env.grace_tokens)
        current_ids = {env.token_1.token_id, env.token_2.token_id}
        if kind == "rotate":
            assert env.token_1 == replace(before.token_2, slot=1)
            assert before.token_1.token_id not in current_ids
            assert (before.token_1.token_id in {t.token_id for t in env.grace_tokens}) == (grace > 0)
        else:
            assert current_ids.isdisjoint(t.token_id for t in before.tokens)
            assert env.grace_tokens == ()
        # ended tokens never come back
        assert not set(transition.ended) & {t.token_id for t in env.tokens}
        # the event is valid, carries fingerprints only, and round-trips
        event = domain.to_event(env)
        assert isinstance(decode_event(encode_event(event)), TokenStateChanged)
        assert b"stk_" not in encode_event(event)
        assert event.generation == env.generation


def test_the_domain_imports_only_the_standard_library_and_shared() -> None:
    tree = ast.parse(Path(domain.__file__).read_text(encoding="utf-8"))
    modules = {
        (node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert modules - {"__future__", "shared"} <= set(sys.stdlib_module_names)
