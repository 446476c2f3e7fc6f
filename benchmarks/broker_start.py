"""Broker start: Apache Kafka format+start → ready, restart → ready, RSS and heap; Tansu beside it.

    .venv/bin/python benchmarks/broker_start.py [--rounds 3]

Each round, one after the other on the same machine:

- **Kafka fresh**: ``ApacheKafkaBroker(<new dir>).start()`` — dev TLS material generated, the log dir
  formatted (``StorageTool format --standalone --add-scram`` for our five service users, a JVM of its own),
  the broker JVM started (``-Xms256m -Xmx512m``, G1), until an authenticated admin call
  (``describe_cluster`` as ``streamtoken-admin`` over SASL_SSL/SCRAM-SHA-512) answers;
- **Kafka restart**: the same data dir stopped (SIGTERM) and started again, to ready;
- **Tansu**: the embedded broker started, to its port accepting connections and then to an admin call
  (``list_topics`` over PLAINTEXT) answering.

RSS is VmRSS right at ready (and, for Kafka, the JVM heap used/committed from ``jcmd GC.heap_info``). The
jars are fetched once beforehand (not timed). Medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker_common import jvm_heap_mb, load_average, rss_mb  # noqa: E402

from shared.broker import EmbeddedBroker, free_port  # noqa: E402
from shared.kafka_broker import ApacheKafkaBroker, ensure_jars  # noqa: E402


def kafka_round(tmp: Path, round_: int) -> dict[str, float]:
    data = tmp / f"kafka-{round_}"
    broker = ApacheKafkaBroker(data, port=free_port())
    figures: dict[str, float] = {}
    started = time.monotonic()
    broker.start()
    figures["fresh"] = time.monotonic() - started
    assert broker.pid is not None
    figures["fresh_rss"] = rss_mb(broker.pid)
    heap = jvm_heap_mb(broker.pid)
    figures["fresh_heap"] = heap[0] if heap else float("nan")
    broker.stop()
    broker = ApacheKafkaBroker(data, port=broker.port)
    started = time.monotonic()
    broker.start()
    figures["restart"] = time.monotonic() - started
    assert broker.pid is not None
    figures["restart_rss"] = rss_mb(broker.pid)
    broker.stop()
    return figures


def tansu_round() -> dict[str, float]:
    from confluent_kafka.admin import AdminClient

    broker = EmbeddedBroker(port=free_port())
    started = time.monotonic()
    broker.start()
    port_open = time.monotonic() - started
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, "log_level": 0})
        admin.list_topics(timeout=10)
        answered = time.monotonic() - started
        assert broker.pid is not None
        return {"tansu_port": port_open, "tansu_admin": answered, "tansu_rss": rss_mb(broker.pid)}
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_jars()
    print(f"broker start: {load_average()}", flush=True)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        for round_ in range(1, args.rounds + 1):
            figures = {**kafka_round(Path(tmp_dir), round_), **tansu_round()}
            for key, value in figures.items():
                results.setdefault(key, []).append(value)
            print(
                f"round {round_}: Kafka format+start -> ready {figures['fresh']:.2f} s "
                f"(RSS {figures['fresh_rss']:.0f} MB, heap used {figures['fresh_heap']:.0f} MB), "
                f"restart -> ready {figures['restart']:.2f} s (RSS {figures['restart_rss']:.0f} MB) | "
                f"Tansu port open {figures['tansu_port'] * 1000:.0f} ms, "
                f"admin call {figures['tansu_admin'] * 1000:.0f} ms "
                f"(RSS {figures['tansu_rss']:.1f} MB)  [{load_average()}]",
                flush=True,
            )

    def med(key: str) -> float:
        return statistics.median(results[key])

    print(
        f"median over {args.rounds} rounds: Kafka format+start -> ready {med('fresh'):.2f} s, "
        f"restart -> ready {med('restart'):.2f} s, RSS at ready {med('fresh_rss'):.0f} MB "
        f"(heap used {med('fresh_heap'):.0f} MB); Tansu to admin call {med('tansu_admin') * 1000:.0f} ms, "
        f"RSS {med('tansu_rss'):.1f} MB; Kafka/Tansu start {med('fresh') / med('tansu_admin'):.0f}x, "
        f"RSS {med('fresh_rss') / med('tansu_rss'):.0f}x"
    )


if __name__ == "__main__":
    main()
