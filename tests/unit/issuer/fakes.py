"""Hand-written in-memory fakes of the issuer's ports (no database, no Kafka)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.issuer.domain import Environment, Transition
from services.issuer.ports import (
    AuditEntry,
    IdempotentResult,
    PatRecord,
    ResolverGeneration,
    RotationSchedule,
    T,
    TokenUsage,
)
from shared.ids import hyphen_prefixes


@dataclass
class State:
    environments: dict[str, Environment] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    ciphertexts: dict[str, str] = field(default_factory=dict)
    outbox: list[tuple[str, int, bytes | None]] = field(default_factory=list)
    published: int = 0  # the first ``published`` outbox rows went to the topic; the others are pending
    audit: list[AuditEntry] = field(default_factory=list)
    keys: dict[tuple[str, str], IdempotentResult] = field(default_factory=dict)
    broker_generations: dict[str, int] = field(default_factory=dict)
    creation_locks: int = 0
    pats: dict[str, PatRecord] = field(default_factory=dict)
    deleted_names: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    purged: set[str] = field(default_factory=set)
    topic_purges: dict[str, datetime] = field(default_factory=dict)  # id → requested at (pending)
    usage: dict[str, TokenUsage] = field(default_factory=dict)  # token id → its usage (clients all kept)
    schedules: dict[str, RotationSchedule] = field(default_factory=dict)


class FakeTx:
    def __init__(self, state: State) -> None:
        self.state = state

    def environment(self, env_id: str, *, for_update: bool = False) -> Environment | None:
        return self.state.environments.get(env_id)

    def deleted_generation(self, env_id: str) -> int | None:
        return self.state.deleted.get(env_id)

    def environments(self, *, for_update: bool = False) -> list[Environment]:
        return [self.state.environments[k] for k in sorted(self.state.environments)]

    def deleted_environment_ids(self) -> list[str]:
        return sorted(self.state.deleted)

    def save(self, transition: Transition, ciphertexts: dict[str, str]) -> None:
        self.state.environments[transition.after.id] = transition.after
        self.state.deleted.pop(transition.after.id, None)
        self.state.deleted_names.pop(transition.after.id, None)
        self.state.purged.discard(transition.after.id)
        self.state.ciphertexts.update(ciphertexts)

    def nested_environment_ids(self, env_id: str) -> list[str]:
        known = set(self.state.environments) | set(self.state.deleted)
        return sorted(i for i in known if i in hyphen_prefixes(env_id) or i.startswith(f"{env_id}-"))

    def mark_deleted(self, env: Environment, at: datetime) -> None:
        del self.state.environments[env.id]
        self.state.deleted[env.id] = env.generation
        self.state.deleted_names[env.id] = (env.org, env.project, env.name)
        self.state.keys = {k: v for k, v in self.state.keys.items() if k[0] != env.id}
        self.state.schedules.pop(env.id, None)
        ids = {t.token_id for t in env.tokens}
        self.state.usage = {k: v for k, v in self.state.usage.items() if k not in ids}

    def ciphertexts(self, token_ids: Sequence[str]) -> dict[str, str]:
        return {t: self.state.ciphertexts[t] for t in token_ids if t in self.state.ciphertexts}

    def add_outbox(self, environment_id: str, generation: int, payload: bytes | None, at: datetime) -> None:
        self.state.outbox.append((environment_id, generation, payload))

    def pending_outbox_heads(self) -> dict[str, tuple[int, bool]]:
        heads: dict[str, tuple[int, bool]] = {}
        for env_id, generation, payload in self.state.outbox[self.state.published :]:
            heads[env_id] = (generation, payload is None)  # a later row of the key replaces an earlier one
        return heads

    def add_audit(self, entry: AuditEntry) -> None:
        self.state.audit.append(entry)

    def idempotent_result(self, env_id: str, key: str) -> IdempotentResult | None:
        return self.state.keys.get((env_id, key))

    def save_idempotent_result(self, env_id: str, key: str, result: IdempotentResult, at: datetime) -> None:
        self.state.keys[(env_id, key)] = result

    def lock_environment_ids(self) -> None:
        self.state.creation_locks += 1  # the fake store runs one transaction at a time anyway

    def broker_generation(self, env_id: str) -> int | None:
        return self.state.broker_generations.get(env_id)

    def record_broker_generation(self, env_id: str, generation: int, at: datetime) -> None:
        known = self.state.broker_generations.get(env_id, 0)
        self.state.broker_generations[env_id] = max(known, generation)

    def add_pat(self, record: PatRecord) -> None:
        self.state.pats[record.jti] = record

    def pat(self, jti: str) -> PatRecord | None:
        return self.state.pats.get(jti)

    def pats(self, limit: int, after: str | None = None) -> list[PatRecord]:
        ordered = sorted(self.state.pats.values(), key=lambda p: (p.created_at, p.jti))
        if after is not None and after in self.state.pats:
            last = self.state.pats[after]
            ordered = [p for p in ordered if (p.created_at, p.jti) > (last.created_at, last.jti)]
        return ordered[:limit]

    def revoke_pat(self, jti: str, at: datetime) -> PatRecord | None:
        record = self.state.pats.get(jti)
        if record is None:
            return None
        if record.revoked_at is None:
            record = replace(record, revoked_at=at)
            self.state.pats[jti] = record
        return record

    def deleted_names(self, env_id: str) -> tuple[str, str, str] | None:
        return self.state.deleted_names.get(env_id)

    def purge_environment(self, env_id: str) -> bool:
        if env_id not in self.state.deleted:
            return False
        self.state.purged.add(env_id)
        return True

    def purged(self, env_id: str) -> bool:
        return env_id in self.state.purged

    def request_topic_purge(self, env_id: str, at: datetime) -> None:
        if env_id in self.state.deleted:
            self.state.topic_purges[env_id] = at

    def topic_purge_pending(self, env_id: str) -> bool:
        return env_id in self.state.topic_purges

    def pending_topic_purges(self) -> list[tuple[str, datetime]]:
        return sorted(self.state.topic_purges.items(), key=lambda item: (item[1], item[0]))

    def finish_topic_purge(self, env_id: str, requested_at: datetime) -> bool:
        if self.state.topic_purges.get(env_id) != requested_at:
            return False
        del self.state.topic_purges[env_id]
        return True

    def token_usage(self, token_ids: Sequence[str], clients_since: datetime) -> dict[str, TokenUsage]:
        return {
            t: replace(u, clients=tuple(c for c in u.clients if c.last_seen_at >= clients_since))
            for t, u in self.state.usage.items()
            if t in token_ids
        }

    def rotation_schedule(self, env_id: str) -> RotationSchedule | None:
        return self.state.schedules.get(env_id)

    def save_rotation_schedule(self, schedule: RotationSchedule, at: datetime) -> None:
        created = schedule.created_at or at
        self.state.schedules[schedule.environment_id] = replace(schedule, created_at=created, updated_at=at)

    def delete_rotation_schedule(self, env_id: str) -> bool:
        return self.state.schedules.pop(env_id, None) is not None

    def rotation_schedules(self) -> list[RotationSchedule]:
        return [s for e, s in sorted(self.state.schedules.items()) if e in self.state.environments]


class FakeStore:
    """Transactions work on a copy that replaces the state only when the block ends without an error."""

    def __init__(self) -> None:
        self.state = State()
        self.commits = 0
        self.open_transactions = 0
        self.pat_reads = 0

    @contextmanager
    def transaction(self) -> Iterator[FakeTx]:
        working = copy.deepcopy(self.state)
        self.open_transactions += 1
        try:
            yield FakeTx(working)
        finally:
            self.open_transactions -= 1
        self.state = working
        self.commits += 1

    def read_back(self, read: Callable[[FakeTx], T], wait_s: float) -> T | None:
        with self.transaction() as tx:
            return read(tx)

    def audit_entries(self, environment_id: str | None, limit: int) -> list[AuditEntry]:
        entries = [e for e in reversed(self.state.audit) if environment_id in (None, e.environment_id)]
        return entries[:limit]

    def pat_record(self, jti: str) -> PatRecord | None:
        self.pat_reads += 1
        return self.state.pats.get(jti)


class CountingWakeup:
    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


class FakeBrokerAccess:
    """A broker that keeps, per environment, the tokens it was told; ``fail`` makes the next calls raise."""

    enforcing = True

    def __init__(self, fail: int = 0, error: str = "KafkaException: _TRANSPORT: broker down") -> None:
        self.fail = fail
        self.error = error
        self.environments: dict[str, dict[str, str]] = {}  # environment → token id → password
        self.topics: set[str] = set()  # the broker's topics (``delete_topics`` removes from it)
        self.calls: list[tuple[str, str]] = []  # ("sync", env) | ("reconcile", "*") | ("delete_topics", p)
        self.closed = False

    def _maybe_fail(self) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError(self.error)

    def sync_environment(self, environment_id: str, tokens: Sequence[tuple[str, str]]) -> None:
        self.calls.append(("sync", environment_id))
        self._maybe_fail()
        if tokens:
            self.environments[environment_id] = dict(tokens)
        else:
            self.environments.pop(environment_id, None)

    def reconcile_all(self, desired: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        self.calls.append(("reconcile", "*"))
        self._maybe_fail()
        self.environments = {env: dict(tokens) for env, tokens in desired.items() if tokens}

    def delete_topics(self, prefix: str, keep: Sequence[str] = ()) -> list[str]:
        self.calls.append(("delete_topics", prefix))
        self._maybe_fail()
        gone = sorted(t for t in self.topics if t.startswith(prefix) and not t.startswith(tuple(keep)))
        self.topics.difference_update(gone)
        return gone

    def users(self) -> set[str]:
        return {token_id for tokens in self.environments.values() for token_id in tokens}

    def close(self) -> None:
        self.closed = True


class FakeResolvers:
    """Resolver replicas answering what ``answers`` says: url → ``(generation, ready)`` or an error string.

    ``during`` is called with each poll (e.g. to check that no transaction is open meanwhile)."""

    def __init__(
        self, answers: dict[str, tuple[int | None, bool] | str], during: Callable[[], None] | None = None
    ):
        self.answers = answers
        self.during = during
        self.polls: list[str] = []
        self.closed = False

    @property
    def urls(self) -> Sequence[str]:
        return list(self.answers)

    def generations(self, environment_id: str) -> list[ResolverGeneration]:
        self.polls.append(environment_id)
        if self.during is not None:
            self.during()
        out = []
        for url, answer in self.answers.items():
            if isinstance(answer, str):
                out.append(ResolverGeneration(url, None, False, answer))
            else:
                out.append(ResolverGeneration(url, answer[0], answer[1]))
        return out

    def close(self) -> None:
        self.closed = True
