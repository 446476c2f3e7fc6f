"""Commit-to-publish latency of the issuer's outbox relay (p50/p99), until the broker acknowledges.

The clock starts when a rotation's transaction has committed (the moment the handler wakes the relay) and
stops when the idempotent producer's delivery report for that outbox row arrives (acks=all). Rotations run
through the real handlers, store (SQLite or PostgreSQL), relay and quixstreams producer, against an embedded
broker on loopback. Target: p99 <= 20 ms.

Usage: ``.venv/bin/python benchmarks/issuer_relay_latency.py [--rotations 500] [--pause-ms 5]``
Runs for well under a minute by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from services.issuer import handlers  # noqa: E402
from services.issuer.adapters import migrate  # noqa: E402
from services.issuer.adapters.db import SqlStore, make_engine  # noqa: E402
from services.issuer.adapters.kafka import KafkaTopicAdmin, QuixPublisher  # noqa: E402
from services.issuer.adapters.relay import OutboxRelay  # noqa: E402
from services.issuer.crypto import TokenCipher  # noqa: E402
from services.issuer.metrics import IssuerMetrics  # noqa: E402
from services.issuer.ports import Delivery, OutboxMessage  # noqa: E402
from shared.broker import EmbeddedBroker, free_port  # noqa: E402
from shared.kafka import KafkaSettings  # noqa: E402
from shared.logs import configure_logging  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from issuer_rotate import percentile, postgres_database  # noqa: E402


class TimedWakeup:
    """Records when each commit woke the relay, keyed by the generation it committed."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self.committed_at: float | None = None

    def wake(self) -> None:
        self.committed_at = time.time()
        self.relay.wake()


def measure(database_url: str, kafka: KafkaSettings, rotations: int, pause_s: float) -> list[float]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    store = SqlStore(engine)
    metrics = IssuerMetrics()
    acked: dict[int, datetime] = {}
    done = threading.Condition()

    def observe(messages: Sequence[OutboxMessage], deliveries: Sequence[Delivery]) -> None:
        with done:
            for message, delivery in zip(messages, deliveries, strict=True):
                if delivery.error is None:
                    acked[message.generation] = delivery.acknowledged_at
            done.notify_all()

    relay = OutboxRelay(
        store,
        QuixPublisher(kafka, delivery_timeout_s=5.0),
        metrics=metrics,
        topic_admin=KafkaTopicAdmin(kafka),
        observer=observe,
    )
    wakeup = TimedWakeup(relay)
    deps = handlers.Deps(store=store, cipher=TokenCipher(Fernet.generate_key().decode()), wakeup=wakeup)
    env = handlers.create_environment(deps, "bench", "relay", "prod", actor="bench")
    relay.start()
    latencies: list[float] = []
    try:
        with done:
            done.wait_for(lambda: 1 in acked, timeout=30)
        for _ in range(20):  # warm-up: connections, producer id, metadata
            handlers.rotate_tokens(deps, env.id, actor="bench")
        time.sleep(0.5)
        for _ in range(rotations):
            view = handlers.rotate_tokens(deps, env.id, actor="bench")
            committed = wakeup.committed_at
            assert committed is not None
            generation = view.generation
            with done:
                if not done.wait_for(lambda: generation in acked, timeout=30):  # noqa: B023
                    raise RuntimeError(f"generation {view.generation} was not acknowledged in 30 s")
                latencies.append(max(acked[view.generation].timestamp() - committed, 0.0))
            time.sleep(pause_s)
    finally:
        relay.stop()
        engine.dispose()
    return latencies


def report(database: str, latencies: list[float]) -> None:
    print(
        f"  {database:<9} rotations={len(latencies):>5}  p50={statistics.median(latencies) * 1000:6.2f} ms  "
        f"p90={percentile(latencies, 90) * 1000:6.2f} ms  p99={percentile(latencies, 99) * 1000:6.2f} ms  "
        f"max={max(latencies) * 1000:6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rotations", type=int, default=500)
    parser.add_argument("--pause-ms", type=float, default=5.0, help="pause between rotations")
    parser.add_argument("--databases", default="sqlite,postgres")
    args = parser.parse_args()
    databases = args.databases.split(",")
    configure_logging("issuer-bench", "WARNING")
    print(f"issuer relay commit-to-ack latency: {os.cpu_count()} CPUs, embedded broker on loopback, acks=all")
    with tempfile.TemporaryDirectory() as tmp_dir, EmbeddedBroker(port=free_port()) as broker:

        def kafka() -> KafkaSettings:
            return KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers, topic=f"bench-{uuid.uuid4().hex[:8]}"
            )

        if "sqlite" in databases:
            url = f"sqlite:///{Path(tmp_dir) / 'relay.db'}"
            report("sqlite", measure(url, kafka(), args.rotations, args.pause_ms / 1000))
        if "postgres" in databases:
            with postgres_database() as pg_url:
                if pg_url:
                    report("postgres", measure(pg_url, kafka(), args.rotations, args.pause_ms / 1000))


if __name__ == "__main__":
    main()
