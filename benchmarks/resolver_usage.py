"""Usage per token (issue 12): what tracking costs the lookup fast path, and the usage write rate.

    .venv/bin/python benchmarks/resolver_usage.py [--duration 10] [--connections 32] [--rounds 3]
        [--tokens 10000]

1. Lookup ratio: `GET /v1/topics/{name}` of the resolver (100,000 environments in its table, a real
   token) against the bare ASGI app of ``resolver_lookup.py``, with usage tracking **off**
   (STREAMTOKEN_RESOLVER_USAGE_ENABLED=false) and **on** (publishing to a real Apache Kafka), one after
   the other in each round, all under the same uvicorn settings and `wrk` load. Target: on >= 0.9x off.
2. Write rate at ``--tokens`` active tokens (one client each), in process: the cost of counting a use
   (``UsageTracker.seen``), building the records of one tick with every token due, producing them to the
   usage topic and waiting for the broker (``KafkaUsagePublisher``), and the issuer folding them into
   SQLite (``SqlStore.fold_usage`` in the fold's batches of 500) with the tokens in its database.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from broker_common import load_average
from resolver_lookup import run

from shared.broker import free_port
from shared.kafka_broker import ApacheKafkaBroker


def lookup_ratio(args: argparse.Namespace, broker: ApacheKafkaBroker, usage_topic: str) -> None:
    from shared.broker_access import RESOLVER_USER
    from shared.tokens import generate_token

    token = generate_token()
    env = broker.environment_for(RESOLVER_USER, usage_topic=usage_topic)
    rows: dict[str, list[float]] = {"hello": [], "off": [], "on": []}
    for round_ in range(1, args.rounds + 1):
        hello = run("hello", token, args.duration, args.connections)
        off = run(
            "resolver",
            token,
            args.duration,
            args.connections,
            {**env, "STREAMTOKEN_RESOLVER_USAGE_ENABLED": "false"},
        )
        on = run(
            "resolver",
            token,
            args.duration,
            args.connections,
            {**env, "STREAMTOKEN_RESOLVER_USAGE_ENABLED": "true"},
        )
        for key, value in (("hello", hello), ("off", off), ("on", on)):
            rows[key].append(value["rps"])
        print(
            f"round {round_}: bare ASGI {hello['rps']:,.0f} req/s | usage off {off['rps']:,.0f} req/s "
            f"(p50 {off['p50']:.2f} ms, p99 {off['p99']:.2f} ms) | usage on {on['rps']:,.0f} req/s "
            f"(p50 {on['p50']:.2f} ms, p99 {on['p99']:.2f} ms) | on/off {on['rps'] / off['rps']:.2f}x, "
            f"off/bare {off['rps'] / hello['rps']:.2f}x, on/bare {on['rps'] / hello['rps']:.2f}x "
            f"[{load_average()}]",
            flush=True,
        )

    def median_ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rows[a], rows[b], strict=True))

    print(
        f"median on/off {median_ratio('on', 'off'):.2f}x over {args.rounds} rounds (target >= 0.9x); "
        f"median on/bare {median_ratio('on', 'hello'):.2f}x, off/bare {median_ratio('off', 'hello'):.2f}x",
        flush=True,
    )


def fast_path_cost(calls: int = 200_000, rounds: int = 5) -> None:
    """``answer_topic_lookup`` called in process (no HTTP, no event loop) with tracking on and off,
    interleaved, so a loaded machine slows both alike: the figure the HTTP ratio is made of."""
    from resolver_lookup import resolver_app

    from services.resolver.api import answer_topic_lookup
    from shared.tokens import generate_token

    token = generate_token()
    resolver = resolver_app(token).resolver
    tracker = resolver.usage
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/topics/f1-data",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"user-agent", b"quixstreams/3.0"),
        ],
        "client": ("10.0.0.1", 50000),
    }
    assert answer_topic_lookup(resolver, scope)[0] == 200  # type: ignore[index]
    timings: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            resolver.usage = tracker if mode == "on" else None
            started = time.perf_counter()
            for _ in range(calls):
                answer_topic_lookup(resolver, scope)
            timings[mode].append((time.perf_counter() - started) / calls * 1e9)
    off, on = statistics.median(timings["off"]), statistics.median(timings["on"])
    print(
        f"fast path in process: {off:,.0f} ns a lookup with usage off, {on:,.0f} ns on "
        f"(+{on - off:,.0f} ns); "
        f"throughput on/off {off / on:.2f}x (medians of {rounds} interleaved rounds of {calls:,}) "
        f"[{load_average()}]",
        flush=True,
    )


def write_rate(tokens: int, broker: ApacheKafkaBroker, usage_topic: str, data_dir: Path) -> None:
    from services.issuer import domain
    from services.issuer.adapters import migrate
    from services.issuer.adapters.db import SqlStore, make_engine
    from services.resolver.table import Match
    from services.resolver.usage import KafkaUsagePublisher, UsageTracker, build_records
    from shared.broker_access import RESOLVER_USER

    # The issuer's database holds the tokens (so the fold keeps their usage).
    engine = make_engine(f"sqlite:///{data_dir / 'issuer.db'}")
    migrate.upgrade(engine)
    store = SqlStore(engine)
    environments = tokens // 2
    now = datetime.now(UTC)
    ids: list[tuple[str, str, str, int]] = []  # environment id, token id, fingerprint, slot
    started = time.perf_counter()
    for start in range(0, environments, 500):
        with store.transaction() as tx:
            for i in range(start, min(start + 500, environments)):
                transition = domain.create_environment(f"o{i}", "p", "e", actor="bench", now=now)
                tx.save(transition, {t.record.token_id: "x" for t in transition.issued})
                env = transition.after
                for t in (env.token_1, env.token_2):
                    ids.append((env.id, t.token_id, t.fingerprint, t.slot))
    print(
        f"{len(ids):,} tokens of {environments:,} environments in the issuer's SQLite in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )

    tracker = UsageTracker(interval=30, max_keys=max(100_000, 2 * tokens))
    matches = [(Match(e, s, t, 1), bytes.fromhex(f)) for e, t, f, s in ids]
    wall = time.time()
    started = time.perf_counter()
    for _ in range(10):
        for match, digest in matches:
            tracker.seen(match, digest, wall, "10.0.0.1", "quixstreams-bench/1", "lookup")
    counted = time.perf_counter() - started
    per_use_ns = counted / (10 * len(matches)) * 1e9
    print(
        f"counting: {10 * len(matches):,} uses of {len(matches):,} tokens in {counted * 1000:.0f} ms "
        f"({per_use_ns:.0f} ns a use; {len(tracker.pending):,} keys pending)",
        flush=True,
    )

    started = time.perf_counter()
    due = tracker.take_due(time.monotonic())
    records = build_records(due, "bench", datetime.now(UTC))
    built = time.perf_counter() - started
    publisher = KafkaUsagePublisher(broker.settings_for(RESOLVER_USER, usage_topic=usage_topic), timeout_s=60)
    publisher.publish(records[:10])  # creates the topic and connects (not timed)
    started = time.perf_counter()
    publisher.publish(records)
    produced = time.perf_counter() - started
    publisher.close()
    print(
        f"one tick with {len(records):,} tokens due: records built in {built * 1000:.0f} ms, produced "
        f"and acknowledged in {produced:.2f} s = {len(records) / produced:,.0f} records/s "
        f"(steady state at a 30 s interval: {len(records) / 30:,.0f} records/s)",
        flush=True,
    )

    started = time.perf_counter()
    folded = 0
    for start in range(0, len(records), 500):
        folded += store.fold_usage(records[start : start + 500], datetime.now(UTC))
    fold_s = time.perf_counter() - started
    print(
        f"issuer fold (SQLite, batches of 500): {folded:,} records in {fold_s:.2f} s = "
        f"{folded / fold_s:,.0f} records/s",
        flush=True,
    )
    started = time.perf_counter()
    for start in range(0, len(records), 500):
        store.fold_usage(records[start : start + 500], datetime.now(UTC))
    again = len(records) / (time.perf_counter() - started)
    print(
        f"issuer fold again (upserts of existing rows): {again:,.0f} records/s",
        flush=True,
    )
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--skip-lookup", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None and not args.skip_lookup:
        sys.exit("wrk not found: apt-get install wrk")
    print(f"resolver usage benchmark: {load_average()}", flush=True)
    fast_path_cost()
    usage_topic = "streamtoken.usage"
    with tempfile.TemporaryDirectory() as tmp:
        broker = ApacheKafkaBroker(Path(tmp) / "kafka", port=free_port())
        with broker:
            broker.grant_services("streaming-tokens")  # the resolver may write the usage topic
            if not args.skip_lookup:
                lookup_ratio(args, broker, usage_topic)
            write_rate(args.tokens, broker, usage_topic, Path(tmp))


if __name__ == "__main__":
    main()
