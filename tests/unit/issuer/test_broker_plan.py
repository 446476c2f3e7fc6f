"""The broker plan: desired vs actual SCRAM users and ACLs, and the prefixes of accepted environment ids."""

from __future__ import annotations

import ast
import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from services.issuer import broker_plan, handlers
from services.issuer.broker_plan import BrokerSnapshot, plan_all, plan_environment
from services.issuer.crypto import TokenCipher
from shared.broker_access import (
    SCRAM_ITERATIONS,
    SCRAM_MECHANISMS,
    Grant,
    Operation,
    Pattern,
    Resource,
    principal,
    service_grants,
    tenant_grants,
)
from tests.unit.issuer.fakes import FakeStore

ENV = "acme-telemetry-prod"
FULL = frozenset((m, SCRAM_ITERATIONS) for m in SCRAM_MECHANISMS)


def actual_of(env: str, token_ids: list[str], extra: frozenset[Grant] = frozenset()) -> BrokerSnapshot:
    return BrokerSnapshot(
        users=dict.fromkeys(token_ids, FULL),
        grants=frozenset(g for t in token_ids for g in tenant_grants(env, t)) | extra,
    )


def test_an_empty_broker_gets_both_mechanisms_and_the_four_prefixed_acls_per_token() -> None:
    plan = plan_environment(ENV, [("tid_1", "pw1"), ("tid_2", "pw2")], BrokerSnapshot())
    assert sorted((u.user, u.mechanism) for u in plan.upserts) == [
        (t, m) for t in ("tid_1", "tid_2") for m in SCRAM_MECHANISMS
    ]
    assert {u.password for u in plan.upserts if u.user == "tid_1"} == {"pw1"}
    assert set(plan.create_grants) == set(tenant_grants(ENV, "tid_1")) | set(tenant_grants(ENV, "tid_2"))
    assert all(g.pattern is Pattern.PREFIXED and g.name == f"{ENV}-" for g in plan.create_grants)
    assert not plan.delete_users
    assert not plan.delete_grants
    assert "pw1" not in repr(plan)  # passwords never printed


def test_a_matching_broker_needs_nothing_idempotent() -> None:
    tokens = [("tid_1", "pw1"), ("tid_2", "pw2")]
    assert plan_environment(ENV, tokens, actual_of(ENV, ["tid_1", "tid_2"])).empty


def test_rotation_removes_the_deactivated_token_and_adds_the_new_one() -> None:
    plan = plan_environment(ENV, [("tid_2", "pw2"), ("tid_3", "pw3")], actual_of(ENV, ["tid_1", "tid_2"]))
    assert {u.user for u in plan.upserts} == {"tid_3"}
    assert set(plan.delete_users) == {("tid_1", m) for m in SCRAM_MECHANISMS}
    assert set(plan.delete_grants) == set(tenant_grants(ENV, "tid_1"))
    assert set(plan.create_grants) == set(tenant_grants(ENV, "tid_3"))


def test_a_deleted_environment_loses_every_tenant_but_services_and_operators_are_left_alone() -> None:
    operator = Grant(principal("alice"), Resource.TOPIC, f"{ENV}-", Pattern.PREFIXED, Operation.READ)
    actual = actual_of(ENV, ["tid_1"], frozenset({operator, *service_grants("streaming-tokens")}))
    actual = BrokerSnapshot({**actual.users, "alice": FULL, "streamtoken-issuer": FULL}, actual.grants)
    plan = plan_environment(ENV, [], actual)
    assert {u for u, _ in plan.delete_users} == {"tid_1"}
    assert set(plan.delete_grants) == set(tenant_grants(ENV, "tid_1"))
    assert not plan.upserts
    assert not plan.create_grants


def test_missing_mechanism_or_wrong_iterations_are_upserted_and_extra_tenant_grants_removed() -> None:
    stray = Grant(principal("tid_1"), Resource.TOPIC, "other-env-x-", Pattern.PREFIXED, Operation.WRITE)
    actual = BrokerSnapshot(
        users={"tid_1": frozenset({("SCRAM-SHA-256", SCRAM_ITERATIONS), ("SCRAM-SHA-512", 8192)})},
        grants=frozenset(tenant_grants(ENV, "tid_1")) | {stray},
    )
    plan = plan_environment(ENV, [("tid_1", "pw1")], actual)
    assert [(u.user, u.mechanism) for u in plan.upserts] == [("tid_1", "SCRAM-SHA-512")]
    assert plan.delete_grants == (stray,)


def test_reconcile_all_deletes_every_tenant_not_desired_and_keeps_the_rest() -> None:
    actual = BrokerSnapshot(
        users={"tid_a": FULL, "tid_gone": FULL, "streamtoken-admin": FULL},
        grants=frozenset(tenant_grants("a-b-c", "tid_a"))
        | frozenset(tenant_grants("x-y-z", "tid_gone"))
        | frozenset(service_grants("streaming-tokens")),
    )
    plan = plan_all({"a-b-c": [("tid_a", "pa")], "d-e-f": [("tid_d", "pd")]}, actual)
    assert {u.user for u in plan.upserts} == {"tid_d"}
    assert {u for u, _ in plan.delete_users} == {"tid_gone"}
    assert set(plan.delete_grants) == set(tenant_grants("x-y-z", "tid_gone"))
    assert set(plan.create_grants) == set(tenant_grants("d-e-f", "tid_d"))


def test_environment_scope_finds_deactivated_principals_on_the_prefix_only() -> None:
    grants = [*tenant_grants(ENV, "tid_old"), *tenant_grants("acme-telemetry-dev", "tid_dev")]
    principals, users = broker_plan.environment_scope(ENV, [("tid_new", "p")], grants)
    assert principals == {"User:tid_new", "User:tid_old"}
    assert users == {"tid_new", "tid_old"}


def test_the_plan_imports_only_the_standard_library_and_shared() -> None:
    tree = ast.parse(Path(broker_plan.__file__).read_text(encoding="utf-8"))
    modules = {
        (node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert modules - {"__future__", "shared"} <= set(sys.stdlib_module_names)


# -- accepted environment ids: their ACL prefixes never both match a topic ---------------------------------

_slug = st.from_regex(r"\A[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,6}\Z")
_names = st.tuples(
    st.sampled_from(["a", "a-b", "acme", "ab"]) | _slug,
    st.sampled_from(["b", "b-c", "x", "telemetry"]) | _slug,
    st.sampled_from(["c", "c-d", "prod", "dev"]) | _slug,
)


def _prefixes(env_id: str) -> set[str]:
    return {g.name for g in tenant_grants(env_id, "tid_x") if g.pattern is Pattern.PREFIXED}


@settings(max_examples=200, deadline=None)
@given(st.lists(_names, min_size=2, max_size=12), st.text("abc-", max_size=4))
def test_accepted_environment_ids_have_acl_prefixes_no_topic_matches_twice(
    triples: list[tuple[str, str, str]], suffix: str
) -> None:
    deps = handlers.Deps(
        store=FakeStore(),
        cipher=TokenCipher(Fernet.generate_key().decode()),
        clock=lambda: datetime(2026, 11, 1, tzinfo=UTC),
    )
    accepted: list[str] = []
    for org, project, name in triples:
        with contextlib.suppress(handlers.Conflict, handlers.Invalid):
            accepted.append(handlers.create_environment(deps, org, project, name, actor="a").id)
    for i, a in enumerate(accepted):
        for b in accepted[i + 1 :]:
            for pa in _prefixes(a):
                for pb in _prefixes(b):
                    # a topic name matching both prefixes exists iff one prefix starts with the other
                    assert not pa.startswith(pb), (a, b)
                    assert not pb.startswith(pa), (a, b)
                    for topic in (pa + suffix + "t", pb + suffix + "t"):
                        assert not (topic.startswith(pa) and topic.startswith(pb)), (a, b, topic)
