"""Findings 8, 9, 12, 13 and 14 of the security review on the use cases and the secrets."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.issuer import domain, handlers
from services.issuer.adapters.relay import error_code
from services.issuer.crypto import DecryptionError, TokenCipher
from services.issuer.secrets import (
    JWT_SECRET_FILE,
    SecretConfigError,
    resolve_encryption_keys,
    resolve_jwt_secret,
)
from shared.settings import RuntimeSettings
from shared.tokens import generate_token
from tests.unit.issuer.fakes import FakeStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def deps() -> handlers.Deps:
    return handlers.Deps(
        store=FakeStore(), cipher=TokenCipher(Fernet.generate_key().decode()), clock=lambda: NOW
    )


def audit_of(deps: handlers.Deps) -> list[str]:
    assert isinstance(deps.store, FakeStore)
    return [e.action for e in deps.store.state.audit]


# -- 12: grace tokens are capped ---------------------------------------------------------------------------


def test_grace_tokens_per_environment_are_capped(deps: handlers.Deps) -> None:
    deps.max_grace_tokens = 4
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    for _ in range(4):
        handlers.rotate_tokens(deps, env.id, actor="a", grace_seconds=3600)
    with pytest.raises(handlers.Conflict, match="already has 4 tokens in their grace period"):
        handlers.rotate_tokens(deps, env.id, actor="a", grace_seconds=3600)
    rotated = handlers.rotate_tokens(deps, env.id, actor="a")  # without a grace period: always possible
    assert len(rotated.grace_tokens) == 4


def test_the_domain_never_keeps_more_grace_tokens_than_the_cap() -> None:
    created = domain.create_environment("a", "b", "c", actor="x", now=NOW)
    env = created.after
    moment = NOW
    for _ in range(10):
        moment += timedelta(seconds=1)
        try:
            env = domain.rotate(
                env, actor="x", now=moment, rotation_id="r", grace=timedelta(days=1), max_grace_tokens=3
            ).after
        except domain.GraceLimitReached:
            env = domain.rotate(env, actor="x", now=moment, rotation_id="r").after
        assert len(env.grace_tokens) <= 3


# -- 13: rotate takes an expected generation ----------------------------------------------------------------


def test_rotate_with_a_stale_expected_generation_changes_nothing(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    handlers.rotate_tokens(deps, env.id, actor="a", expected_generation=1)
    with pytest.raises(handlers.PreconditionFailed) as refused:
        handlers.rotate_tokens(deps, env.id, actor="a", expected_generation=1)  # a rerun after a timeout
    assert refused.value.generation == 2
    assert "generation 2" in refused.value.message
    with pytest.raises(handlers.PreconditionFailed):
        handlers.revoke_tokens(deps, env.id, actor="a", expected_generation=1)
    assert handlers.get_environment(deps, env.id).generation == 2


# -- 14: a replay that shows tokens is a reveal ------------------------------------------------------------


def test_an_idempotent_replay_is_audited_as_a_reveal(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    first = handlers.rotate_tokens(deps, env.id, actor="pat:alice", idempotency_key="k", pat_id="j1")
    again = handlers.rotate_tokens(deps, env.id, actor="pat:mallory", idempotency_key="k", pat_id="j2")
    assert again.token_2.token == first.token_2.token
    assert audit_of(deps) == ["create", "rotate", "reveal"]
    assert isinstance(deps.store, FakeStore)
    replay = deps.store.state.audit[-1]
    assert (replay.actor, replay.pat_id, replay.detail["replay_of"]) == ("pat:mallory", "j2", "rotate")


def test_several_fernet_keys_decrypt_and_reencrypt_moves_to_the_first() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = generate_token()
    sealed = TokenCipher(old).encrypt(token)
    both = TokenCipher([new, old])
    assert both.decrypt(sealed) == token  # a reveal after the key change, old key still listed
    moved = both.reencrypt(sealed)
    assert TokenCipher(new).decrypt(moved) == token
    with pytest.raises(DecryptionError):
        TokenCipher(new).decrypt(sealed)


def test_encryption_keys_are_a_list_current_first(tmp_path: Path) -> None:
    prod = RuntimeSettings(env="prod", data_dir=tmp_path)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert resolve_encryption_keys(SecretStr(f"{new}, {old}"), prod) == [new, old]
    with pytest.raises(SecretConfigError, match="key 2"):
        resolve_encryption_keys(SecretStr(f"{new},nope"), prod)


# -- 8: secret strength in every mode, private secret files --------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "test", "prod"])
def test_a_weak_explicit_jwt_secret_is_refused_in_every_mode(tmp_path: Path, env: str) -> None:
    runtime = RuntimeSettings(env=env, data_dir=tmp_path)
    for weak in ("changeme", "x" * 40, "short"):
        with pytest.raises(SecretConfigError, match="weak"):
            resolve_jwt_secret(SecretStr(weak), runtime)


def test_generated_dev_secrets_are_strong_and_private(tmp_path: Path) -> None:
    dev = RuntimeSettings(env="dev", data_dir=tmp_path / "data")
    secret = resolve_jwt_secret(None, dev)
    assert len(secret) >= 48
    path = tmp_path / "data" / JWT_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    dev = RuntimeSettings(env="dev", data_dir=tmp_path)
    resolve_jwt_secret(None, dev)
    os.chmod(tmp_path / JWT_SECRET_FILE, 0o644)
    with pytest.raises(SecretConfigError, match="chmod 600"):
        resolve_jwt_secret(None, dev)


def test_a_secret_file_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = RuntimeSettings(env="dev", data_dir=tmp_path)
    resolve_jwt_secret(None, dev)
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # as if another user had created the file
    with pytest.raises(SecretConfigError, match="belongs to uid"):
        resolve_jwt_secret(None, dev)


# -- 9: a deleted id is not inherited by other names ---------------------------------------------------------


def test_a_deleted_id_goes_to_other_names_only_after_a_purge(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "data-prod", "eu", actor="a")
    handlers.delete_environment(deps, env.id, actor="a")
    with pytest.raises(handlers.Conflict, match="purge"):
        handlers.create_environment(deps, "acme-data", "prod", "eu", actor="a")
    again = handlers.create_environment(deps, "acme", "data-prod", "eu", actor="a")  # the same names: fine
    handlers.delete_environment(deps, again.id, actor="a", purge=True)
    with pytest.raises(handlers.Conflict, match="still being deleted"):  # its topics are not gone yet
        handlers.create_environment(deps, "acme-data", "prod", "eu", actor="a")
    purges = handlers.StoreTopicPurges(deps.store, deps.clock)
    for purge in purges.pending():  # what the relay does once the broker deleted the topics
        purges.done(purge, [], enforced=True)
    other = handlers.create_environment(deps, "acme-data", "prod", "eu", actor="a")
    assert other.generation == again.generation + 1  # consumers that remember the id still follow
    handlers.delete_environment(deps, other.id, actor="a")
    handlers.delete_environment(deps, other.id, actor="a", purge=True)  # purging a deleted id later
    assert audit_of(deps)[-1] == "purge"
    with pytest.raises(handlers.NotFound):
        handlers.delete_environment(deps, "never-was-here", actor="a", purge=True)


# -- readiness reasons ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (
            "BrokerAccessError: describe_acls failed (CLUSTER_AUTHORIZATION_FAILED: principal User:x ...)",
            "CLUSTER_AUTHORIZATION_FAILED",
        ),
        (
            "KafkaException: _TRANSPORT: 127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed",
            "_TRANSPORT",
        ),
        (
            "PublishFailed: 1 of 3 not acknowledged: KafkaError{code=_MSG_TIMED_OUT,val=-192}",
            "_MSG_TIMED_OUT",
        ),
        ("ConnectionRefusedError: [Errno 111] Connection refused", None),
    ],
)
def test_the_readiness_reason_is_the_kafka_error_name_only(text: str, code: str | None) -> None:
    assert error_code(text) == code
