"""A fault run anyone can repeat (issue 10): rotations, lookups, producers and webhook receivers on the real
stack on a 3-node Apache Kafka cluster, while brokers, services (and PostgreSQL) are killed and restarted.

    .venv/bin/python benchmarks/chaos.py [--minutes 2] [--seed 1] [--environments 3] [--postgres]

Loopback only, bounded in time (``--minutes`` of faults, then at most a few minutes to settle and check).
The workload is the one of ``tests/e2e/test_cluster_faults.py`` (its helpers are imported): each environment
has a webhook subscription to a loopback receiver, renewed with the newest Token 2 after each rotation, and an
idempotent confluent-kafka producer configured from its token's Portal credentials, moved to the newest Token
2 after each rotation; rotations go round-robin over the environments, each rotate call sent again with the
same ``Idempotency-Key`` until it answers 200 (bounded); a lookup thread calls ``GET /v1/topics/f1-data`` with
every environment's current token.

Faults, one at a time, at seeded random moments (every 8-20 s, after the previous one recovered):
- a broker: SIGKILL of a random node, restarted 3-8 s later; recovered = the node answers an authenticated
  admin call and every partition of the control and tenant topics is in sync on all three nodes;
- a service: SIGKILL of the issuer's, the resolver's or the notifier's process group, started again 1-3 s
  later (``Stack.restart_child``); recovered = its ``/health/ready`` answers 200;
- with ``--postgres`` (the issuer and the notifier on a fresh PostgreSQL database each):
  ``pg_ctlcluster --skip-systemctl-redirect 15 main restart``; recovered = the issuer's and the notifier's
  readiness answer 200 again. PostgreSQL is shared with other runs on the machine: only this script
  restarts it.

Printed at the end: rotations attempted / applied / lost (a rotation is lost when its rotate call answered 200
but the resolver never reached its generation, or the control topic lacks it; must be 0); notifications
expected / delivered (distinct webhook-ids) / duplicated (raw deliveries of a webhook-id already seen, and
distinct webhook-ids for one (subscription, generation)); the resolver's worst staleness (a rotation's 200 to
the resolver answering its generation); records acknowledged and delivery errors of the producers; lookups by
answer; and the recovery time of each fault.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("STREAMTOKEN_ENV", "test")

import httpx  # noqa: E402

from shared.kafka_broker import KafkaCluster  # noqa: E402
from tests.e2e.harness import RunningStack, running_stack  # noqa: E402
from tests.e2e.test_cluster_faults import (  # noqa: E402
    STEP_TIMEOUT,
    Phase,
    Rotation,
    Tenant,
    WebhookReceiver,
    create_tenant,
    drained,
    follow,
    isr_gaps,
    resolver_generation,
    rotate,
    tuned_cluster,
    wait_until,
)
from tests.support import read_records  # noqa: E402

POSTGRES_ADMIN = os.environ.get("STREAMTOKEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Fault:
    kind: str  # broker | issuer | resolver | notifier | postgres
    target: str
    at: float
    down_s: float = 0.0
    recovered_s: float | None = None  # from the kill to recovered
    note: str = ""


@dataclass
class Lookups:
    answers: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)


def lookup_loop(stack: RunningStack, tenants: list[Tenant], lookups: Lookups, deadline: float) -> None:
    """``GET /v1/topics/f1-data`` with the token each environment's client was moved to (one the resolver has
    already answered for), every 50 ms, counted by answer."""
    with httpx.Client(base_url=stack.urls["resolver"], timeout=5.0) as client:
        for tenant in itertools.cycle(tenants):
            if lookups.stop.is_set() or time.monotonic() > deadline:
                return
            try:
                response = client.get(
                    "/v1/topics/f1-data", headers={"Authorization": f"Bearer {tenant.client.wanted}"}
                )
                lookups.answers[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                lookups.answers[type(exc).__name__] += 1
            time.sleep(0.05)


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def postgres_databases(enabled: bool) -> Iterator[dict[str, str]]:
    """Fresh databases for the issuer and the notifier (their ``*_DATABASE_URL`` variables), dropped after."""
    if not enabled:
        yield {}
        return
    import psycopg

    names = {service: f"chaos_{service}_{uuid.uuid4().hex[:8]}" for service in ("issuer", "notifier")}
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {f"STREAMTOKEN_{s.upper()}_DATABASE_URL": f"{base}/{n}" for s, n in names.items()}
    finally:
        with (
            suppress(Exception),
            psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=10) as admin,
        ):
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Chaos:
    """Schedules and carries out one fault at a time. Everything that spawns a process runs on the main
    thread (the brokers' ``die_with_parent`` signals a child when the thread that forked it ends)."""

    def __init__(
        self,
        rng: random.Random,
        cluster: KafkaCluster,
        stack: RunningStack,
        topics: list[str],
        postgres: bool,
    ) -> None:
        self.rng = rng
        self.cluster = cluster
        self.stack = stack
        self.topics = topics
        self.kinds = ["broker", "broker", "service", "service"] + (["postgres"] if postgres else [])
        self.faults: list[Fault] = []
        self.next_at = time.monotonic() + rng.uniform(8, 20)
        self.pending: Fault | None = None
        self.restart_at = 0.0
        self.restart: Any = None
        self.recovered: Any = None

    def tick(self) -> None:
        """Called between rotations: start a fault, restart what it killed, or check its recovery."""
        now = time.monotonic()
        fault = self.pending
        if fault is None:
            if now >= self.next_at:
                self._start(now)
            return
        if self.restart is not None and now >= self.restart_at:
            self.restart()
            self.restart = None
            fault.down_s = time.monotonic() - fault.at
        if self.restart is None and self.recovered():
            fault.recovered_s = time.monotonic() - fault.at
            print(
                f"  {fault.kind} {fault.target}: down {fault.down_s:.1f} s, "
                f"recovered {fault.recovered_s:.1f} s"
            )
            self.pending = None
            self.next_at = time.monotonic() + self.rng.uniform(8, 20)
        elif now - fault.at > 240:
            fault.note = "not recovered after 240 s"
            print(f"  {fault.kind} {fault.target}: NOT recovered after 240 s")
            self.pending = None
            self.next_at = now + self.rng.uniform(8, 20)

    def finish(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pending is not None and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.2)

    def _start(self, now: float) -> None:
        kind = self.rng.choice(self.kinds)
        if kind == "broker":
            node_id = self.rng.choice(sorted(self.cluster.nodes))
            node = self.cluster.nodes[node_id]
            role = "controller" if self.cluster.controller() == node_id else "broker"
            fault = Fault("broker", f"node {node_id} ({role})", now)
            self.cluster.kill(node_id)
            state = {"ready": False}

            def restart_node() -> None:
                node.stop()
                node.launch()

                def wait() -> None:
                    with suppress(Exception):
                        node.wait_ready(180)
                        state["ready"] = True

                threading.Thread(target=wait, daemon=True).start()

            self.restart = restart_node
            self.restart_at = now + self.rng.uniform(3, 8)
            self.recovered = lambda: state["ready"] and not isr_gaps(self.cluster, self.topics)
        elif kind == "service":
            name = self.rng.choice(["issuer", "resolver", "notifier"])
            child = next(c for c in self.stack.stack.children if c.name == name)
            fault = Fault("service", name, now)
            assert child.process is not None
            with suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(30)
            self.restart = lambda: self.stack.stack.restart_child(child)
            self.restart_at = now + self.rng.uniform(1, 3)
            url = child.ready_url or ""
            self.recovered = lambda: ready(url)
        else:
            fault = Fault("postgres", "restart", now)
            result = subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                fault.note = (result.stderr or result.stdout).strip()[:200]
            urls = [c.ready_url or "" for c in self.stack.stack.children if c.name in {"issuer", "notifier"}]
            fault.down_s = time.monotonic() - now
            self.restart = None
            self.recovered = lambda: all(ready(u) for u in urls)
        self.faults.append(fault)
        self.pending = fault
        print(f"  t+{now - START:.0f} s: {fault.kind} {fault.target} killed")


START = time.monotonic()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    with postgres_databases(args.postgres) as database_env, tuned_cluster(tmp / "cluster") as cluster:
        print(f"cluster up ({cluster.bootstrap_servers}); starting the stack")
        with running_stack(cluster, tmp / "stack", **database_env) as stack:
            return workload(args, rng, cluster, stack)


def workload(args: argparse.Namespace, rng: random.Random, cluster: KafkaCluster, stack: RunningStack) -> int:
    receiver = WebhookReceiver().start()
    phase = Phase("chaos")
    bound = args.minutes * 60 + 900
    tenants = [create_tenant(stack, receiver.url, phase, i, bound) for i in range(args.environments)]
    control_topic = stack.env["STREAMTOKEN_KAFKA_TOPIC"]
    topics = [control_topic, *(t.topic for t in tenants)]
    chaos = Chaos(rng, cluster, stack, topics, args.postgres)
    lookups = Lookups()
    deadline = time.monotonic() + args.minutes * 60
    looker = threading.Thread(target=lookup_loop, args=(stack, tenants, lookups, deadline + 600), daemon=True)
    looker.start()
    attempted = 0
    succeeded: list[Rotation] = []
    never_ok: list[str] = []
    not_applied: list[Rotation] = []
    print(f"{args.minutes} min of rotations and faults (seed {args.seed}, {len(tenants)} environments)")

    def rotations() -> None:
        nonlocal attempted
        for tenant in itertools.cycle(tenants):
            if time.monotonic() > deadline:
                return
            wait_until(functools.partial(drained, tenant), STEP_TIMEOUT, every=0.02)
            attempted += 1
            try:
                rotation = rotate(stack, tenant, "chaos")
            except AssertionError as exc:
                never_ok.append(str(exc)[:200])
                continue
            if rotation.generation != tenant.generation + 1:
                print(
                    f"  {tenant.environment_id}: generation {rotation.generation} after {tenant.generation}"
                )
            tenant.generation = rotation.generation
            succeeded.append(rotation)
            try:
                follow(stack, tenant, rotation, receiver.url, cluster)
            except AssertionError as exc:
                not_applied.append(rotation)
                print(f"  {str(exc)[:300]}")

    # Rotations on a thread of their own, faults on this one (it spawns the restarted processes), so a
    # restart happens on time even while a rotation waits for the service that is down.
    rotator = threading.Thread(target=rotations, name="rotations", daemon=True)
    rotator.start()
    try:
        while rotator.is_alive() and time.monotonic() < deadline + 2 * STEP_TIMEOUT + 60:
            if time.monotonic() <= deadline or chaos.pending is not None:
                chaos.tick()
            time.sleep(0.1)
        chaos.finish()
        rotator.join(2 * STEP_TIMEOUT + 60)
    finally:
        lookups.stop.set()
        phase.name = "after"
    return report(
        stack, cluster, receiver, tenants, chaos, lookups, attempted, succeeded, never_ok, not_applied
    )


def report(
    stack: RunningStack,
    cluster: KafkaCluster,
    receiver: WebhookReceiver,
    tenants: list[Tenant],
    chaos: Chaos,
    lookups: Lookups,
    attempted: int,
    succeeded: list[Rotation],
    never_ok: list[str],
    not_applied: list[Rotation],
) -> int:
    control_topic = stack.env["STREAMTOKEN_KAFKA_TOPIC"]
    # Settle: the resolver at every final generation, the notifications in.
    wait_until(
        lambda: all((resolver_generation(stack, t.environment_id) or 0) >= t.generation for t in tenants), 120
    )
    lost = 0
    for tenant in tenants:
        final = resolver_generation(stack, tenant.environment_id) or 0
        lost += sum(
            1 for r in succeeded if r.environment_id == tenant.environment_id and r.generation > final
        )
    records = read_records(
        cluster.admin_settings().librdkafka(), control_topic, len(tenants) + len(succeeded), timeout=120
    )
    on_topic: dict[str, list[int]] = {}
    for record in records:
        if record.key is not None and record.value is not None:
            on_topic.setdefault(record.key, []).append(int(json.loads(record.value)["generation"]))
    topic_missing = sum(1 for r in succeeded if r.generation not in set(on_topic.get(r.environment_id, [])))
    topic_repeats = sum(sum(n - 1 for n in Counter(v).values() if n > 1) for v in on_topic.values())
    topic_disorder = sum(sum(1 for a, b in itertools.pairwise(v) if b <= a) for v in on_topic.values())
    for environment_id, generations in on_topic.items():
        repeated = sorted(g for g, n in Counter(generations).items() if n > 1)
        if repeated:
            print(f"  control topic: {environment_id} has generations {repeated} more than once")

    def delivered() -> bool:
        return all(
            set(receiver.generations(t.subscription_id))
            >= set(range(t.first_generation + 1, t.generation + 1))
            for t in tenants
        )

    wait_until(delivered, 120, every=0.2)
    expected = delivered_n = missing = distinct_twice = 0
    for tenant in tenants:
        got = receiver.generations(tenant.subscription_id)
        want = set(range(tenant.first_generation + 1, tenant.generation + 1))
        expected += len(want)
        delivered_n += len(want & set(got))
        missing += len(want - set(got))
        distinct_twice += sum(n - 1 for n in got.values() if n > 1)
    staleness = [r.applied_at - r.ok_at for r in succeeded if r.applied_at]
    retried = sum(1 for r in succeeded if len(r.statuses) > 1)
    failed_calls = Counter(s for r in succeeded for s in r.statuses[:-1])
    acked = sum(sum(t.client.acked.values()) for t in tenants)
    errors: Counter[str] = Counter()
    for tenant in tenants:
        errors.update(tenant.client.error_names)
    for tenant in tenants:
        tenant.client.stop()
    for tenant in tenants:
        tenant.client.join(60)
    receiver.stop()

    print()
    print(
        f"rotations: attempted {attempted}, answered 200 {len(succeeded)} (retried {retried}: "
        f"{dict(failed_calls) or '-'}), never answered {len(never_ok)}, applied by the resolver "
        f"{len(succeeded) - lost}, lost {lost}; control topic: missing {topic_missing}, "
        f"repeated {topic_repeats}, out of order {topic_disorder}; "
        f"not applied within {STEP_TIMEOUT:.0f} s at the time {len(not_applied)}"
    )
    print(
        f"notifications: expected {expected}, delivered {delivered_n}, missing {missing}, duplicated: "
        f"raw (same webhook-id) {receiver.raw_duplicates} of {receiver.raw}, distinct ids for one "
        f"(subscription, generation) {distinct_twice}"
    )
    print(
        f"resolver staleness (rotate 200 -> resolver answers the generation): p50 "
        f"{percentile(staleness, 50) * 1000:.0f} ms, p99 {percentile(staleness, 99) * 1000:.0f} ms, worst "
        f"{max(staleness, default=float('nan')) * 1000:.0f} ms"
    )
    print(f"producers: records acknowledged {acked}, delivery errors {dict(errors) or 0}")
    print(f"lookups: {dict(lookups.answers)}")
    print("faults:")
    for fault in chaos.faults:
        recovered = "never" if fault.recovered_s is None else f"{fault.recovered_s:.1f} s"
        note = f" ({fault.note})" if fault.note else ""
        print(f"  {fault.kind:8} {fault.target:22} down {fault.down_s:5.1f} s, recovered {recovered}{note}")
    for message in never_ok:
        print(f"  never answered: {message}")
    ok = lost == 0 and topic_missing == 0 and missing == 0
    print("OK" if ok else "FAILED: something was lost")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of faults (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument(
        "--postgres", action="store_true", help="issuer and notifier on PostgreSQL, restarted"
    )
    args = parser.parse_args()
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
