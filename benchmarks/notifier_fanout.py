"""Fan-out of one rotation to 10,000 subscriptions: deliveries per second and the notifier's peak memory.

Runs, all on loopback: the embedded broker (or ``STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS`` if set), a fast ASGI
webhook receiver in its own process (uvicorn), and the notifier as ``python -m services.notifier`` on SQLite.
The subscriptions are written straight into the notifier's database (registration is not what is measured);
then one ``rotated`` event is produced and the clock runs until the receiver has seen every webhook-id.

    .venv/bin/python benchmarks/notifier_fanout.py [--subscriptions 10000] [--workers 128]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.broker import EmbeddedBroker, free_port  # noqa: E402
from shared.events import Change, ChangeType, TokenRef, TokenStateChanged, encode_event, encode_key  # noqa: E402
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic  # noqa: E402
from shared.tokens import fingerprint, generate_token, new_token_id  # noqa: E402

TIME_LIMIT = 240.0


# --- the receiver process ---------------------------------------------------------------------------------


class _ReceiverState:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.requests = 0
        self.connections = 0
        self.times: list[float] = []


def run_receiver(port: int) -> None:
    """A deliberately cheap webhook receiver: a raw asyncio protocol with httptools' parser on uvloop.

    It answers 200 to every POST and remembers each ``webhook-id`` and arrival time; ``GET /count`` answers
    what it has seen (distinct ids, requests, TCP connections that carried webhooks, first/last and
    10th/90th percentile arrival times). It keeps connections alive, so the connection count shows whether
    the notifier reuses them.
    """
    import asyncio

    import httptools
    import uvloop

    state = _ReceiverState()
    ok = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'

    def count_body() -> bytes:
        times = state.times
        n = len(times)
        stats = {
            "distinct": len(state.seen),
            "requests": state.requests,
            "connections": state.connections,
            "first": times[0] if n else 0.0,
            "last": times[-1] if n else 0.0,
            "p10": times[n // 10] if n else 0.0,
            "p90": times[(n * 9) // 10 - 1] if n >= 10 else 0.0,
        }
        body = json.dumps(stats).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    class Protocol(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None
            self.webhook_id: bytes | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
            self.counted = False

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.close()

        def on_message_begin(self) -> None:
            self.webhook_id = None

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"webhook-id":
                self.webhook_id = value

        def on_message_complete(self) -> None:
            assert self.transport is not None
            if self.parser.get_method() == b"GET":
                self.transport.write(count_body())
            else:
                state.requests += 1
                if not self.counted:  # connections that carried webhooks (not the GET /count polls)
                    self.counted = True
                    state.connections += 1
                state.times.append(time.time())
                if self.webhook_id is not None:
                    state.seen.add(self.webhook_id.decode())
                self.transport.write(ok)
            if not self.parser.should_keep_alive():
                self.transport.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Protocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


# --- the benchmark ----------------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _seed_subscriptions(database_url: str, environment_id: str, receiver_url: str, count: int) -> None:
    from sqlalchemy import insert

    from services.notifier.domain import new_secret
    from services.notifier.store import Store
    from services.notifier.tables import SUBSCRIPTIONS

    store = Store.from_url(database_url)
    store.create_tables()
    now = time.time()
    secret = new_secret()
    rows = [
        {
            "id": f"sub_bench{i:06d}",
            "environment_id": environment_id,
            "deployment_id": f"deployment-{i}",
            "url": f"{receiver_url}/hooks/{i}",
            "action": "reload",
            "secret": secret,
            "enabled": True,
            "last_notified_generation": 1,
            "acked_generation": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(SUBSCRIPTIONS), rows)
    store.dispose()


def _consumed_created(port: int) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return any(
        line.startswith('streamtoken_notifier_events_total{kind="created"}') and float(line.split()[-1]) >= 1
        for line in text.splitlines()
    )


def _rotation(environment_id: str, change: ChangeType = ChangeType.ROTATED) -> TokenStateChanged:
    org, project, name = environment_id.split("-")
    return TokenStateChanged(
        environment_id=environment_id,
        org=org,
        project=project,
        environment=name,
        generation=2,
        tokens=tuple(
            TokenRef(slot=slot, token_id=new_token_id(), fingerprint=fingerprint(generate_token()))
            for slot in (1, 2)
        ),
        change=Change(
            type=change,
            actor="bench",
            at=datetime.now(UTC),
            rotation_id="rot_bench" if change is ChangeType.ROTATED else None,
        ),
    )


def _produce(kafka: KafkaSettings, event: TokenStateChanged) -> None:
    from confluent_kafka import Producer

    producer = Producer(kafka.librdkafka())
    producer.produce(kafka.topic, key=encode_key(event.environment_id), value=encode_event(event))
    producer.flush(10)


def _delivered(database_url: str) -> int:
    from services.notifier.store import Store

    store = Store.from_url(database_url)
    try:
        return store.count_by_status().get("delivered", 0)
    finally:
        store.dispose()


def _wrap(command: list[str], profile_dir: str | None, name: str) -> list[str]:
    """The command, under ``py-spy record`` (collapsed stacks in ``profile_dir/name.txt``) if asked."""
    if not profile_dir:
        return command
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    out = str(Path(profile_dir) / f"{name}.txt")
    return [py_spy, "record", "--nonblocking", "--rate", "200", "--format", "raw", "-o", out, "--", *command]


def _python_child(process: psutil.Process) -> psutil.Process:
    """The Python process itself when it runs under py-spy (py-spy's own CPU is not the service's)."""
    for _ in range(100):
        if "py-spy" not in process.name():
            return process
        kids = process.children()
        if kids:
            return kids[0]
        time.sleep(0.05)
    return process


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def receiver_capacity(requests: int, connections: int) -> None:
    """The receiver alone, driven by an aiohttp load generator in this process: requests/s and CPU/request."""
    import asyncio

    import aiohttp

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    try:
        _wait(lambda: _http_ok(f"{url}/count"), 30, "the receiver")
        receiver = psutil.Process(child.pid)
        body = b'{"type":"streaming_tokens.rotated"}'

        async def drive() -> float:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
                counter = iter(range(requests))

                async def one_connection() -> None:
                    for i in counter:
                        headers = {"webhook-id": f"msg_{i}", "content-type": "application/json"}
                        async with session.post(f"{url}/hook", data=body, headers=headers) as response:
                            await response.read()

                started = time.perf_counter()
                await asyncio.gather(*(one_connection() for _ in range(connections)))
                return time.perf_counter() - started

        cpu_before = _cpu(receiver)
        elapsed = asyncio.run(drive())
        receiver_cpu = _cpu(receiver) - cpu_before
        stats = httpx.get(f"{url}/count", timeout=5).json()
    finally:
        child.terminate()
        child.wait(10)
    print(f"receiver alone: {stats['distinct']} requests over {stats['connections']} connections")
    print(f"  wall {elapsed:.2f} s -> {requests / elapsed:,.0f} req/s (client and receiver share the cores)")
    print(f"  receiver CPU {receiver_cpu:.2f} s -> {receiver_cpu / requests * 1e6:.0f} us/request")
    print(f"  receiver capacity on one core ~ {requests / max(receiver_cpu, 1e-9):,.0f} requests/s")
    print(f"  load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=256, help="STREAMTOKEN_NOTIFIER_WORKERS")
    parser.add_argument(
        "--profile", metavar="DIR", help="run notifier and receiver under py-spy; collapsed stacks in DIR"
    )
    parser.add_argument(
        "--receiver-capacity",
        action="store_true",
        help="measure the receiver alone (aiohttp load generator) instead of the fan-out",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the notifier, e.g. STREAMTOKEN_NOTIFIER_CLAIM_BATCH=512",
    )
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return
    if args.receiver_capacity:
        receiver_capacity(args.subscriptions, args.workers)
        return

    started = time.monotonic()
    load_before = os.getloadavg()
    children: list[subprocess.Popen[bytes]] = []
    broker: EmbeddedBroker | None = None
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        try:
            bootstrap = os.environ.get("STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS")
            if not bootstrap:
                broker = EmbeddedBroker(port=free_port()).start()
                bootstrap = broker.bootstrap_servers
            kafka = KafkaSettings(
                bootstrap_servers=bootstrap, topic=f"bench-{int(time.time())}", session_timeout_ms=3000
            )
            ensure_streaming_tokens_topic(kafka)

            receiver_port = free_port()
            receiver_url = f"http://127.0.0.1:{receiver_port}"
            receiver_cmd = [sys.executable, __file__, "--receiver", str(receiver_port)]
            receiver_child = subprocess.Popen(_wrap(receiver_cmd, args.profile, "receiver"))
            children.append(receiver_child)
            _wait(lambda: _http_ok(f"{receiver_url}/count"), 30, "the receiver")
            receiver = _python_child(psutil.Process(receiver_child.pid))

            environment_id = "bench-fanout-prod"
            database_url = f"sqlite:///{tmp}/notifier.db"
            _seed_subscriptions(database_url, environment_id, receiver_url, args.subscriptions)

            port = free_port()
            env = {
                **os.environ,
                "STREAMTOKEN_ENV": "test",
                "STREAMTOKEN_DATA_DIR": tmp,
                "STREAMTOKEN_LOG_LEVEL": "WARNING",
                "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMTOKEN_KAFKA_TOPIC": kafka.topic,
                "STREAMTOKEN_KAFKA_SESSION_TIMEOUT_MS": "3000",
                "STREAMTOKEN_NOTIFIER_PORT": str(port),
                "STREAMTOKEN_NOTIFIER_DATABASE_URL": database_url,
                "STREAMTOKEN_NOTIFIER_WORKERS": str(args.workers),
                "STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY": "0",
            }
            for item in args.env:
                name, _, value = item.partition("=")
                env[name] = value
            notifier_cmd = [sys.executable, "-m", "services.notifier"]
            notifier_child = subprocess.Popen(
                _wrap(notifier_cmd, args.profile, "notifier"), cwd=ROOT, env=env
            )
            children.append(notifier_child)
            _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/health/ready"), 60, "the notifier")
            process = _python_child(psutil.Process(notifier_child.pid))
            peak_rss = process.memory_info().rss
            idle_rss = peak_rss
            # Warm-up: a `created` event notifies nobody; once the notifier has counted it, its consumer has
            # joined the group and been assigned the partition, so the rotation below measures the fan-out
            # and not the group join that follows a start.
            ready_at = time.time()
            _produce(kafka, _rotation("bench-warmup-prod", ChangeType.CREATED))
            _wait(lambda: _consumed_created(port), 60, "the notifier to consume the warm-up event")
            joined_at = time.time()
            notifier_cpu0, receiver_cpu0 = _cpu(process), _cpu(receiver)

            produced_at = time.time()
            _produce(kafka, _rotation(environment_id))
            stats: dict[str, Any] = {}

            def all_received() -> bool:
                nonlocal peak_rss, stats
                peak_rss = max(peak_rss, process.memory_info().rss)
                stats = httpx.get(f"{receiver_url}/count", timeout=5).json()
                return bool(stats["distinct"] >= args.subscriptions)

            _wait(all_received, TIME_LIMIT - (time.monotonic() - started), "every webhook")
            receiver_cpu = _cpu(receiver) - receiver_cpu0
            _wait(lambda: _delivered(database_url) >= args.subscriptions, 60, "the results to be recorded")
            recorded_at = time.time()
            notifier_cpu = _cpu(process) - notifier_cpu0
            peak_rss = max(peak_rss, process.memory_info().rss)
            time.sleep(0.5)
            final = httpx.get(f"{receiver_url}/count", timeout=5).json()
        finally:
            for child in children:
                child.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
            for child in children:
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
            if broker is not None:
                broker.stop()

    n = args.subscriptions
    sending = stats["last"] - stats["first"]
    middle = stats["p90"] - stats["p10"]
    load_after = os.getloadavg()
    print(f"subscriptions                           {n}")
    print(
        f"webhook requests received               {final['requests']} ({final['distinct']} distinct "
        f"webhook-ids, {final['connections']} TCP connections)"
    )
    print(f"ready -> warm-up event consumed (join)  {joined_at - ready_at:.2f} s")
    print(f"produce -> first webhook                {stats['first'] - produced_at:.2f} s")
    print(f"first -> last webhook                   {sending:.2f} s")
    print(f"steady rate, first -> last webhook      {n / sending:,.0f} /s")
    print(f"steady rate, 10th -> 90th percentile    {0.8 * n / middle:,.0f} /s")
    to_last, to_recorded = stats["last"] - produced_at, recorded_at - produced_at
    print(f"produce -> last webhook                 {to_last:.2f} s  ({n / to_last:,.0f} /s)")
    print(f"produce -> all recorded delivered (DB)  {to_recorded:.2f} s  ({n / to_recorded:,.0f} /s)")
    per_delivery, per_request = notifier_cpu / n * 1e6, receiver_cpu / n * 1e6
    print(f"notifier CPU produce -> recorded        {notifier_cpu:.2f} s ({per_delivery:.0f} us/delivery)")
    print(f"receiver CPU produce -> last webhook    {receiver_cpu:.2f} s ({per_request:.0f} us/request)")
    print(f"notifier RSS idle / peak                {idle_rss / 2**20:.0f} MiB / {peak_rss / 2**20:.0f} MiB")
    print(f"cpu cores {psutil.cpu_count()} ; workers {args.workers} ; extra env {' '.join(args.env) or '-'}")
    print(f"load average before / after (1 min)     {load_before[0]:.2f} / {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
