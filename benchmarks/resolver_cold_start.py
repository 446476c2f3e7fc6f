"""Cold start: seconds until /health/ready is 200 and peak RSS, with N environments in the topic.

    .venv/bin/python benchmarks/resolver_cold_start.py [--environments 1000000] [--rounds 3]
        [--baseline-root /tmp/resolver-old] [--broker kafka|embedded|both] [--kafka-c1]

Starts a dedicated broker — Apache Kafka (``--broker kafka``, the default: SASL_SSL + SCRAM, the records
produced as the broker's admin, the resolver reading as its own principal ``streamtoken-resolver``) or the
embedded Tansu (``--broker embedded``, PLAINTEXT, as the figures before issue 9 were taken), or both
(``--broker both``: the same records in each, the resolver started against each alternately) — produces N
environments (one record each, in the issuer's format), then starts `python -m services.resolver` as a
process and times it to ready; checks a sample of real tokens resolves. Targets: <= 10 s and <= 500 MB
peak RSS for 1,000,000 environments.

Apache Kafka runs with the JVM's full JIT (``ApacheKafkaBroker(fast_start=False)``): with C1 only (the
launcher's fast start for tests) its TLS is ~10x slower and the replay takes ~3x longer. ``--kafka-c1`` adds a
second Kafka node started that way (``kafka-c1``, its own copy of the records), in the same rounds.

``--rounds`` starts the resolver that many times against the same records and prints the median. With
``--baseline-root`` (a checkout of another commit, e.g. ``git worktree add /tmp/resolver-old 31a43cc``)
each round runs that checkout's resolver too, alternately, with this interpreter: on a shared machine
whose load moves the figures by seconds, only side-by-side figures compare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from broker_common import load_average
from resolver_common import (
    ROOT,
    environment_id,
    peak_rss_mb,
    produce_environments,
    start_resolver_process,
    wait_ready,
)

from shared.broker import EmbeddedBroker, free_port
from shared.broker_access import RESOLVER_USER
from shared.kafka import KafkaSettings
from shared.kafka_broker import ApacheKafkaBroker
from shared.tokens import generate_token


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--environments", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-root", default=None, help="checkout of another commit to alternate with")
    parser.add_argument("--broker", choices=["kafka", "embedded", "both"], default="kafka")
    parser.add_argument("--kafka-c1", action="store_true", help="also a Kafka node with C1 only (fast start)")
    args = parser.parse_args()
    n = args.environments
    sample = sorted({0, n // 3, n // 2, n - 1})
    real = {(i, slot): generate_token() for i in sample for slot in (1, 2)}
    brokers = ["kafka", "embedded"] if args.broker == "both" else [args.broker]
    if args.kafka_c1:
        brokers.insert(1, "kafka-c1")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        sources: dict[str, tuple[KafkaSettings, dict[str, str]]] = {}
        for kind in brokers:
            sources[kind] = stack.enter_context(broker_with_records(kind, Path(tmp), args.partitions))
            seconds = produce_environments(sources[kind][0], n, real)
            print(
                f"produced {n:,} environments to {kind} in {seconds:.1f} s ({args.partitions} partitions)",
                flush=True,
            )
        roots = [("this tree", ROOT)]
        if args.baseline_root:
            roots.insert(0, ("baseline", Path(args.baseline_root).resolve()))
        runs = [(f"{name} on {kind}", root, kind) for kind in brokers for name, root in roots]
        results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runs}
        for round_ in range(1, args.rounds + 1):
            for label, root, kind in runs if round_ % 2 else runs[::-1]:
                kafka, resolver_env = sources[kind]
                to_ready, rss = run_once(kafka, n, real, root, Path(tmp), args.timeout, resolver_env)
                results[label].append((to_ready, rss))
                print(
                    f"round {round_} {label}: {to_ready:.2f} s to ready, peak RSS {rss:.0f} MB "
                    f"[{load_average()}]",
                    flush=True,
                )
        for label, figures in results.items():
            times = [t for t, _ in figures]
            low, high = min(r for _, r in figures), max(r for _, r in figures)
            print(
                f"{label}: median {statistics.median(times):.2f} s to ready "
                f"({min(times):.2f}-{max(times):.2f}), peak RSS {low:.0f}-{high:.0f} MB"
            )


@contextmanager
def broker_with_records(
    kind: str, tmp: Path, partitions: int
) -> Iterator[tuple[KafkaSettings, dict[str, str]]]:
    """A dedicated broker: the producer's settings (Kafka: its admin) and the resolver's extra variables
    (Kafka: its own principal)."""
    if kind in {"kafka", "kafka-c1"}:
        node = ApacheKafkaBroker(tmp / kind, port=free_port(), fast_start=kind == "kafka-c1")
        with node as kafka_broker:
            kafka_broker.grant_services("streaming-tokens")
            yield (
                kafka_broker.admin_settings(topic="streaming-tokens", topic_partitions=partitions),
                kafka_broker.environment_for(
                    RESOLVER_USER, topic="streaming-tokens", topic_partitions=partitions
                ),
            )
        return
    with EmbeddedBroker(port=free_port(), log_path=tmp / "broker.log") as broker:
        yield (
            KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers,
                topic="streaming-tokens",
                topic_partitions=partitions,
            ),
            {},
        )


def run_once(
    kafka: KafkaSettings,
    n: int,
    real: dict[tuple[int, int], str],
    root: Path,
    tmp: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[float, float]:
    """Start the resolver of ``root``; (seconds from process start to /health/ready 200, peak RSS MB)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    process = start_resolver_process(kafka, port, tmp / "resolver.log", root, **(env or {}))
    try:
        body = wait_ready(url, timeout)
        to_ready = time.monotonic() - started
        rss = peak_rss_mb(process.pid)
        for (i, slot), token in real.items():
            who = httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
            assert who["environment_id"] == environment_id(i), who
            assert who["slot"] == slot, who
        assert body["environments"] == n, body
        print(f"environments in table: {body['environments']:,} (records read {body['records']:,})")
        print(f"seconds to ready (process start -> /health/ready 200): {to_ready:.2f} s")
        print(f"replica load time (service start -> caught up): {body['load_seconds']:.2f} s")
        print(f"peak RSS (VmHWM) at ready: {rss:.0f} MB")
        return to_ready, rss
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
