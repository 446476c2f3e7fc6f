"""Apache Kafka at N environments (2N SCRAM users, 8N prefixed ACLs): reconcile from scratch, memory, cut-off.

    .venv/bin/python benchmarks/broker_scale.py [--environments 10000] [--samples 50] [--heap 512m]
        [--max-seconds 900]

One broker (``shared.kafka_broker``, fresh data dir, the project's JVM settings) and the issuer's broker
adapter in this process, as the issuer's own principal
(``services.issuer.adapters.broker.KafkaBrokerAccess``):

1. **cut-off, empty broker** (the baseline, same run): one environment with two tokens; ``--samples``
   times a plain confluent-kafka consumer logs in with Token 1's SCRAM-SHA-256 credentials over SASL_SSL,
   joins a group ``{env}-readers-N`` and reads (a trickle producer writes every 20 ms), then
   ``sync_environment(env, [token 2, a new token])`` runs, as a rotation does; the clock stops at the
   consumer's first authorization error. Also printed: the ``sync_environment`` call itself.
2. **reconcile from scratch**: ``reconcile_all`` of N environments (two tokens each: 2N users with
   SCRAM-SHA-256 and -512 credentials at 4096 iterations, 4 prefixed ACLs a token). Progress (the adapter's
   admin requests answered, 1,000 alterations or bindings each) is printed every 10 s. Stops being
   attempted above ``--max-seconds``: then the script says how far it got.
3. **memory and metadata**: broker RSS and JVM heap used after a full GC (``jcmd GC.run`` +
   ``GC.heap_info``), and the KRaft metadata log's size on disk, before and after.
4. **cut-off at that size**: step 1 again on the full broker.
5. **the split**: 8 x N/4 more ACLs alone (for principals that have no user), to split the cost between
   users and ACLs; then one ``delete_acls`` of 4 and one of 100 exact filters, timed (the controller
   matches each filter against every ACL it holds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker_common import (  # noqa: E402
    OpenConsumer,
    Trickle,
    jvm_gc,
    jvm_heap_mb,
    load_average,
    percentile,
    rss_mb,
)

from services.issuer.adapters.broker import KafkaBrokerAccess  # noqa: E402
from shared.broker import free_port  # noqa: E402
from shared.broker_access import ISSUER_USER, broker_password, tenant_grants  # noqa: E402
from shared.kafka_broker import ApacheKafkaBroker, create_grants  # noqa: E402
from shared.logs import configure_logging  # noqa: E402

CONTROL_TOPIC = "streaming-tokens-scale"


def environment_id(i: int) -> str:
    return f"org{i % 100:03d}-project-env{i:06d}"


def token(i: int, slot: int) -> tuple[str, str]:
    """(token id, broker password) of environment ``i``'s token in ``slot`` (stand-ins, not real tokens)."""
    return f"tid_{i:010x}{slot:06x}", broker_password(f"bench-{i}-{slot}")


class CountingAccess(KafkaBrokerAccess):
    """The adapter, counting the admin requests it has had answered (each is up to 1,000 items)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done: Counter[str] = Counter()

    def _wait(self, call: str, futures: Any, *, missing_ok: bool = False) -> None:
        super()._wait(call, futures, missing_ok=missing_ok)
        self.done[call] += len(futures)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metadata_bytes(broker: ApacheKafkaBroker) -> int:
    directory = broker.data_dir / "logs" / "__cluster_metadata-0"
    return sum(f.stat().st_size for f in directory.iterdir() if f.suffix in {".log", ".checkpoint"})


def memory(broker: ApacheKafkaBroker) -> dict[str, float]:
    assert broker.pid is not None
    jvm_gc(broker.pid)
    heap = jvm_heap_mb(broker.pid)
    return {
        "rss": rss_mb(broker.pid),
        "heap": heap[0] if heap else float("nan"),
        "committed": heap[1] if heap else float("nan"),
        "metadata": metadata_bytes(broker) / 1e6,
    }


def consumer_config(broker: ApacheKafkaBroker, token_id: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": token_id,
        "sasl.password": password,
        "ssl.ca.location": str(broker.ca_path),
        "socket.timeout.ms": 10000,
        "log_level": 0,
    }


def cutoffs(
    broker: ApacheKafkaBroker, access: KafkaBrokerAccess, env_id: str, samples: int, label: str, base: int
) -> tuple[list[float], list[float]]:
    """``samples`` rotations of ``env_id`` by ``sync_environment``: (rotation → refused, the call's time)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{env_id}-f1-data"
    admin = AdminClient(broker.admin_settings().librdkafka())
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        try:
            future.result(30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    tokens = [token(base, 1), token(base, 2)]
    access.sync_environment(env_id, tokens)
    trickle = Trickle(broker.admin_settings().librdkafka())
    trickle.topics.append(topic)
    refused: list[float] = []
    calls: list[float] = []
    errors: Counter[str] = Counter()
    try:
        for n in range(samples):
            old = tokens[0]
            consumer = OpenConsumer(consumer_config(broker, *old), topic, f"{env_id}-readers-{label}-{n}")
            try:
                consumer.wait_reading()
                tokens = [tokens[1], token(base, n + 3)]
                started = time.monotonic()
                access.sync_environment(env_id, tokens)
                calls.append(time.monotonic() - started)
                refused_at = consumer.wait_refused(30)
            finally:
                consumer.close()
            if refused_at is None:
                errors["never refused in 30 s"] += 1
            else:
                refused.append(refused_at - started)
                errors[str(consumer.error_name)] += 1
    finally:
        trickle.close()
    print(f"  {label}: {samples} samples, first errors {dict(errors)}")
    return refused, calls


def show(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name}: p50 {statistics.median(ms):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
        f"max {max(ms):.0f} ms (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--environments", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--heap", default="512m", help="broker JVM -Xmx (the project's default: 512m)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound of the reconcile step")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", False)  # not the adapter's line per environment synced
    n = args.environments
    print(
        f"Apache Kafka at {n:,} environments ({2 * n:,} users, {8 * n:,} ACLs): {load_average()}", flush=True
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        broker = ApacheKafkaBroker(Path(tmp_dir) / "kafka", port=free_port(), heap=args.heap).start()
        try:
            broker.grant_services(CONTROL_TOPIC)
            access = CountingAccess(broker.settings_for(ISSUER_USER, topic=CONTROL_TOPIC), timeout_s=60)
            run(broker, access, n, args)
        finally:
            broker.stop()
    print(f"done: {load_average()}")


def run(broker: ApacheKafkaBroker, access: CountingAccess, n: int, args: argparse.Namespace) -> None:
    small = cutoffs(broker, access, environment_id(n + 1), args.samples, "empty broker", 2 * n + 10)
    print(show("  cut-off, empty broker: sync_environment -> open consumer refused", small[0]))
    print(show("  cut-off, empty broker: the sync_environment call", small[1]), flush=True)
    before = memory(broker)
    print(
        f"before: RSS {before['rss']:.0f} MB, heap used after GC {before['heap']:.0f} MB "
        f"(committed {before['committed']:.0f} MB), metadata log {before['metadata']:.1f} MB",
        flush=True,
    )
    desired = {environment_id(i): [token(i, 1), token(i, 2)] for i in range(n)}
    # reconcile_all also removes the baseline environment's users and ACLs (not in the desired state).
    result: dict[str, Any] = {}

    def reconcile() -> None:
        try:
            access.reconcile_all(desired)
        except Exception as exc:  # reported below
            result["error"] = exc
        result["done"] = time.monotonic()

    expected = {"alter_user_scram_credentials": 4 * n, "create_acls": 8 * n}
    assert broker.pid is not None
    cpu_here, cpu_broker = time.process_time(), cpu_seconds(broker.pid)
    access.done.clear()
    started = time.monotonic()
    worker = threading.Thread(target=reconcile, daemon=True)
    worker.start()
    while worker.is_alive() and time.monotonic() - started < args.max_seconds:
        worker.join(10)
        done = access.done
        print(
            f"  {time.monotonic() - started:6.0f} s: credential upserts "
            f"{done['alter_user_scram_credentials']:,}/{expected['alter_user_scram_credentials']:,}, "
            f"ACLs {done['create_acls']:,}/{expected['create_acls']:,}  [{load_average()}]",
            flush=True,
        )
    if worker.is_alive():
        print(f"reconcile still running after {args.max_seconds:.0f} s: stopped measuring here")
        return
    if "error" in result:
        raise result["error"]
    took = result["done"] - started
    print(
        f"reconcile_all from scratch: {took:.1f} s for {n:,} environments "
        f"({2 * n / took:,.0f} users/s, {8 * n / took:,.0f} ACLs/s); CPU: this process (the adapter, "
        f"librdkafka salting the passwords) {time.process_time() - cpu_here:.1f} s, the broker "
        f"{cpu_seconds(broker.pid) - cpu_broker:.1f} s",
        flush=True,
    )
    after = memory(broker)
    print(
        f"after: RSS {after['rss']:.0f} MB, heap used after GC {after['heap']:.0f} MB "
        f"(committed {after['committed']:.0f} MB), metadata log {after['metadata']:.1f} MB",
        flush=True,
    )
    large = cutoffs(broker, access, environment_id(0), args.samples, f"{n} environments", 3 * n + 10)
    print(show(f"cut-off at {n:,} environments: sync_environment -> open consumer refused", large[0]))
    print(show(f"cut-off at {n:,} environments: the sync_environment call", large[1]))
    print(show("cut-off, empty broker (same run): sync_environment -> open consumer refused", small[0]))
    ratio = percentile(large[0], 99) / percentile(small[0], 99)
    print(f"p99 ratio full/empty: {ratio:.2f}")

    # ACLs alone: 8 x N/4 bindings for principals without a SCRAM user, to split the cost.
    extra = n // 4
    grants = [
        g for i in range(extra) for slot in (1, 2) for g in tenant_grants(f"x{i:07d}", f"tid_x{i}{slot}")
    ]
    t0 = time.monotonic()
    for start in range(0, len(grants), 1000):
        create_grants(broker.admin_settings(), grants[start : start + 1000], timeout=60)
    acl_seconds = time.monotonic() - t0
    acls = memory(broker)
    per_acl_heap = (acls["heap"] - after["heap"]) * 1e6 / len(grants)
    per_acl_log = (acls["metadata"] - after["metadata"]) * 1e6 / len(grants)
    total_heap = (after["heap"] - before["heap"]) * 1e6
    total_log = (after["metadata"] - before["metadata"]) * 1e6
    per_user_heap = (total_heap - per_acl_heap * 8 * n) / (2 * n)
    per_user_log = (total_log - per_acl_log * 8 * n) / (2 * n)
    print(
        f"+{len(grants):,} ACLs alone in {acl_seconds:.1f} s: heap used {acls['heap']:.0f} MB, "
        f"metadata log {acls['metadata']:.1f} MB, RSS {acls['rss']:.0f} MB"
    )
    print(
        f"derived: heap ~{per_acl_heap:,.0f} B an ACL, ~{per_user_heap:,.0f} B a user (2 SCRAM credentials); "
        f"metadata log ~{per_acl_log:,.0f} B an ACL, ~{per_user_log:,.0f} B a user",
        flush=True,
    )
    # What one DeleteAcls request costs at this size: the controller matches every filter against every ACL.
    from confluent_kafka.admin import AdminClient

    from shared.kafka_acls import AclMapping

    mapping = AclMapping()
    admin = AdminClient({**broker.admin_settings().librdkafka(), "log_level": 0})
    total_acls = 8 * n + len(grants)
    for count in (4, 100):
        filters = [mapping.exact_filter(mapping.binding(g)) for g in grants[:count]]
        grants = grants[count:]
        t0 = time.monotonic()
        for future in admin.delete_acls(filters, request_timeout=120).values():
            future.result(121)
        took = time.monotonic() - t0
        print(
            f"delete_acls of {count} exact filters at {total_acls:,} ACLs: {took * 1000:.0f} ms "
            f"({took * 1e9 / (count * total_acls):.0f} ns a filter per ACL held)",
            flush=True,
        )
        total_acls -= count


if __name__ == "__main__":
    main()
