"""Environment ids never nest across a ``-``, even when nesting ids are created at the same moment: the
create transactions are serialised (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine

from services.issuer import handlers
from services.issuer.adapters import migrate
from services.issuer.adapters.db import SqlStore, make_engine
from services.issuer.crypto import TokenCipher
from shared.ids import hyphen_prefixes


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _nesting_names(base: str) -> list[tuple[str, str, str]]:
    """Names whose ids nest: ``b-x-y``, ``b-x-y-z``, ``b-x-y-z-w`` and the same id twice by other names."""
    return [
        (base, "x", "y"),
        (base, "x", "y-z"),
        (base, "x-y", "z"),  # the same id as the one above
        (base, "x", "y-z-w"),
        (base, "x-y-z", "w"),
        (f"{base}-x", "y", "z"),
    ]


def _race(deps: handlers.Deps, names: list[tuple[str, str, str]]) -> list[str]:
    """Create all ``names`` at once (one thread each, released together); ``ok:<id>`` or ``conflict``."""
    barrier = threading.Barrier(len(names))
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(org: str, project: str, name: str) -> None:
        barrier.wait()
        try:
            env = handlers.create_environment(deps, org, project, name, actor="race")
            result = f"ok:{env.id}"
        except handlers.Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create, args=n) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_concurrent_creation_of_nesting_ids_accepts_at_most_one_of_each_pair(engine: Engine) -> None:
    store = SqlStore(engine)
    deps = handlers.Deps(store=store, cipher=TokenCipher(Fernet.generate_key().decode()))
    for _ in range(8):
        base = f"n{uuid.uuid4().hex[:6]}"
        names = _nesting_names(base) * 2  # each name twice: 12 threads racing
        outcomes = _race(deps, names)
        assert len(outcomes) == len(names)  # every create answered: accepted or a 409, never a 5xx
        with store.transaction() as tx:
            existing = [e.id for e in tx.environments() if e.id.startswith(base)]
        assert len(existing) == len(set(existing))
        assert existing, "one of them must have been accepted"
        for a in existing:
            for b in existing:
                assert a not in hyphen_prefixes(b), (a, b, existing)
        accepted = [o.removeprefix("ok:") for o in outcomes if o.startswith("ok:")]
        assert sorted(accepted) == sorted(existing)  # an accepted create is one that exists
