"""Processes starting together on one fresh database migrate it once, and none of them fails.

Two issuer replicas, the issuer and ``streamtoken admin ...``, two notifiers (or an issuer and a notifier
sharing one database) may all reach the first migration at the same moment. Each test here starts real
processes that call the services' own ``make_engine`` + ``migrate.upgrade`` (what the service's start and
the admin commands run), holds them at a barrier until all have imported everything, releases them at
once, and then checks that every one exited 0 and each service's version table holds its head revision
exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.issuer.adapters import migrate as issuer_migrate
from services.notifier import migrate as notifier_migrate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4

# One child: import and build the engine, say "ready", wait for the go line on stdin, then migrate.
_CHILD = """
import sys
service, url = sys.argv[1], sys.argv[2]
if service == "issuer":
    from services.issuer.adapters import migrate
    from services.issuer.adapters.db import make_engine
    engine = make_engine(url)
else:
    from services.notifier import migrate
    from services.notifier.store import make_engine
    engine = make_engine(url)
print("ready", flush=True)
sys.stdin.readline()
migrate.upgrade(engine)
print(migrate.current_revision(engine), flush=True)
"""


def _migrate_together(url: str, services: list[str]) -> list[tuple[str, int, str, str]]:
    """Run one child a service in ``services``, all released at the same moment: (service, rc, out, err)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, service, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for service in services
    ]
    try:
        for child in children:  # the barrier: every child has imported and built its engine
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.communicate()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for service, child in zip(services, children, strict=True):
            out, err = child.communicate(timeout=120)
            results.append((service, child.returncode, out.strip(), err.strip()))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _versions(url: str, table: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())
    finally:
        engine.dispose()


def _assert_all_migrated(url: str, services: list[str]) -> None:
    heads = {"issuer": issuer_migrate.head_revision(), "notifier": notifier_migrate.head_revision()}
    results = _migrate_together(url, services)
    failed = [(service, rc, err[-2000:]) for service, rc, _, err in results if rc != 0]
    assert not failed, failed
    assert [out.splitlines()[-1] for _, _, out, _ in results] == [heads[s] for s in services]
    if "issuer" in services:
        assert _versions(url, "alembic_version") == [heads["issuer"]]
    if "notifier" in services:
        assert _versions(url, notifier_migrate.VERSION_TABLE) == [heads["notifier"]]


@pytest.mark.parametrize("service", ["issuer", "notifier"])
def test_replicas_starting_together_migrate_a_fresh_database_once(database_url: str, service: str) -> None:
    _assert_all_migrated(database_url, [service] * PROCESSES)


def test_the_issuer_and_the_notifier_starting_together_on_one_fresh_database(database_url: str) -> None:
    _assert_all_migrated(database_url, ["issuer", "notifier"] * (PROCESSES // 2))
