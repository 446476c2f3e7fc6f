"""Where the resolver's 1M-record replay spends its time on Apache Kafka: broker JIT, TLS, client, broker.

    .venv/bin/python benchmarks/kafka_replay_diagnosis.py [--environments 1000000] [--rounds 3]
        [--broker-variants c1,c2] [--client-variants replica] [--protocols sasl_ssl,plaintext] [--tansu]

A diagnostic, not a product path. One Apache Kafka node (``ApacheKafkaBroker``, one data dir, the records
produced once, 3 partitions, the issuer's format) whose rendered ``server.properties`` gets, in this
process only, a second listener ``PLAIN`` (PLAINTEXT, ``User:ANONYMOUS`` a super user) beside the
product's SASL_SSL one, so the same records are read with and without TLS + SCRAM. Each round restarts
the broker once per broker variant (the same data dir) and reads all records with a bare confluent-kafka
consumer — the replica's configuration (``services/resolver/replica.py``) plus the client variant's
overrides, the replica's read loop (``poll`` then ``consume(9999, 0)``, key and value touched, nothing
decoded) — once per protocol and client variant, in an order that alternates between rounds. A warm-up
read of 200,000 records over SASL_SSL follows every restart (the broker of a benchmark has just taken the
produce; a deployed one has run for a while). Printed per read: wall seconds, CPU seconds of the broker's
java process and of this process (librdkafka's threads included) during the read, load average; at the
end medians per combination. ``--tansu`` reads the same number of records from the embedded Tansu broker
too (PLAINTEXT), as the resolver's earlier figures were taken.

Broker variants: ``c1`` (``-XX:TieredStopAtLevel=1``, the launcher's fast start), ``c2`` (full tiered
JIT), ``c2-sockbuf`` (c2, socket buffers left to the kernel: ``socket.*.buffer.bytes=-1``), ``c2-threads``
(c2, ``num.network.threads=1``, ``num.io.threads=2``). Client variants: ``replica`` (as is),
``bigfetch`` (``max.partition.fetch.bytes`` 16 MB, ``fetch.max.bytes`` 64 MB), ``minbytes``
(``fetch.min.bytes`` 1 MB, ``fetch.wait.max.ms`` 100), ``queued`` (``queued.min.messages`` 1,000,000,
``queued.max.messages.kbytes`` 256 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker_common import load_average
from resolver_common import produce_environments

import shared.kafka_broker as kafka_broker
from shared.broker import EmbeddedBroker, free_port
from shared.kafka import KafkaSettings
from shared.kafka_broker import ApacheKafkaBroker

TOPIC = "streaming-tokens"
BROKER_VARIANTS: dict[str, tuple[bool, dict[str, str]]] = {
    "c1": (True, {}),
    "c2": (False, {}),
    "c2-sockbuf": (False, {"socket.send.buffer.bytes": "-1", "socket.receive.buffer.bytes": "-1"}),
    "c2-threads": (False, {"num.network.threads": "1", "num.io.threads": "2"}),
}
CLIENT_VARIANTS: dict[str, dict[str, Any]] = {
    "replica": {},
    "bigfetch": {"max.partition.fetch.bytes": 16 << 20, "fetch.max.bytes": 64 << 20},
    "minbytes": {"fetch.min.bytes": 1 << 20, "fetch.wait.max.ms": 100},
    "queued": {"queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 256 * 1024},
}
_extra: dict[str, str] = {}
_plain_port = free_port()
_original_render = kafka_broker.render_config


def _render_with_plaintext(
    values: Mapping[str, object],
    template: Path = kafka_broker.TEMPLATE,
    properties: Mapping[str, str] | None = None,
) -> str:
    """The product's rendering plus a PLAINTEXT listener and the variant's properties (this process only)."""
    lines = []
    for line in _original_render(values, template, properties).splitlines():
        if line.startswith(("listeners=", "advertised.listeners=")):
            line += f",PLAIN://127.0.0.1:{_plain_port}"
        elif line.startswith("listener.security.protocol.map="):
            line += ",PLAIN:PLAINTEXT"
        elif line.startswith("super.users="):
            line += ";User:ANONYMOUS"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in _extra.items()]
    return "\n".join(lines) + "\n"


kafka_broker.render_config = _render_with_plaintext


def replica_config(kafka: KafkaSettings) -> dict[str, Any]:
    """What ``TableReplica.on_start`` configures (its stats callback left out)."""
    return {
        **kafka.librdkafka(),
        "group.id": f"diag-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 20,
        "fetch.max.bytes": 32 * 1024 * 1024,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "client.id": "streamtoken-resolver-diag",
    }


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_all(
    kafka: KafkaSettings, n: int, overrides: dict[str, Any], java_pid: int | None
) -> tuple[float, ...]:
    """(wall s, broker CPU s, client CPU s) to read ``n`` records from the beginning, the replica's way."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**replica_config(kafka), **overrides})
    try:
        java0, client0, started = cpu_seconds(java_pid), time.process_time(), time.monotonic()
        partitions = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        consumer.assign([TopicPartition(TOPIC, p, -2) for p in sorted(partitions)])
        seen, deadline = 0, started + 300
        while seen < n and time.monotonic() < deadline:
            first = consumer.poll(0.1)
            if first is None:
                continue
            for message in [first, *consumer.consume(9_999, 0)]:
                if message.error() is None:
                    _ = message.key(), message.value()
                    seen += 1
        wall = time.monotonic() - started
        if seen < n:
            raise RuntimeError(f"read {seen} of {n} records in {wall:.0f} s")
        return wall, cpu_seconds(java_pid) - java0, time.process_time() - client0
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--environments", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker-variants", default="c1,c2")
    parser.add_argument("--client-variants", default="replica")
    parser.add_argument("--protocols", default="sasl_ssl,plaintext")
    parser.add_argument("--tansu", action="store_true")
    args = parser.parse_args()
    n = args.environments
    broker_variants = args.broker_variants.split(",")
    client_variants = args.client_variants.split(",")
    protocols = args.protocols.split(",")
    results: dict[str, list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data, port = Path(tmp) / "kafka", free_port()
        broker = ApacheKafkaBroker(data, port=port).start()
        try:
            broker.grant_services(TOPIC)
            admin = broker.admin_settings(topic=TOPIC, topic_partitions=3)
            print(
                f"produced {n:,} records to Apache Kafka in {produce_environments(admin, n):.1f} s",
                flush=True,
            )
        finally:
            broker.stop()
        listeners = {
            "sasl_ssl": broker.settings_for("streamtoken-resolver", topic=TOPIC),
            "plaintext": KafkaSettings(bootstrap_servers=f"127.0.0.1:{_plain_port}", topic=TOPIC),
        }
        for round_ in range(1, args.rounds + 1):
            order = broker_variants if round_ % 2 else broker_variants[::-1]
            for variant in order:
                fast_start, extra = BROKER_VARIANTS[variant]
                _extra.clear()
                _extra.update(extra)
                broker = ApacheKafkaBroker(data, port=port, fast_start=fast_start).start()
                try:
                    read_all(listeners["sasl_ssl"], min(200_000, n), {}, None)  # warm-up
                    combos = [(p, c) for p in protocols for c in client_variants]
                    for protocol, client in combos if round_ % 2 else combos[::-1]:
                        figures = read_all(listeners[protocol], n, CLIENT_VARIANTS[client], broker.pid)
                        label = f"broker {variant:10} {protocol:9} client {client}"
                        results.setdefault(label, []).append(figures)
                        wall, java, client_cpu = figures
                        print(
                            f"round {round_} {label}: {wall:6.2f} s wall, broker CPU {java:5.1f} s, "
                            f"client CPU {client_cpu:5.1f} s [{load_average()}]",
                            flush=True,
                        )
                finally:
                    broker.stop()
        if args.tansu:
            with EmbeddedBroker(port=free_port(), log_path=Path(tmp) / "tansu.log") as tansu:
                settings = KafkaSettings(
                    bootstrap_servers=tansu.bootstrap_servers, topic=TOPIC, topic_partitions=3
                )
                print(
                    f"produced {n:,} records to Tansu in {produce_environments(settings, n):.1f} s",
                    flush=True,
                )
                for round_ in range(1, args.rounds + 1):
                    figures = read_all(settings, n, {}, tansu.pid)
                    results.setdefault("tansu plaintext client replica", []).append(figures)
                    print(
                        f"round {round_} tansu: {figures[0]:6.2f} s wall, broker CPU {figures[1]:5.1f} s, "
                        f"client CPU {figures[2]:5.1f} s [{load_average()}]",
                        flush=True,
                    )
    print(f"medians over {args.rounds} rounds, {n:,} records [{load_average()}]")
    for label, rows in results.items():
        wall, java, client_cpu = (statistics.median(column) for column in zip(*rows, strict=True))
        print(
            f"{label}: median {wall:6.2f} s ({min(r[0] for r in rows):.2f}-{max(r[0] for r in rows):.2f}), "
            f"{n / wall / 1000:5.0f}k records/s, broker CPU {java:5.1f} s, client CPU {client_cpu:5.1f} s"
        )


if __name__ == "__main__":
    main()
