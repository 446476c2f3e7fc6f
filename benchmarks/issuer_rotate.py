"""Rotate API throughput and latency (p50/p99) of the issuer on SQLite and PostgreSQL.

The issuer runs as its own process (``python -m services.issuer``) on loopback with its relay publishing to an
embedded broker; this process drives it with httpx clients. Two loads per database:

- ``sequential``: one client, one rotation at a time (latency of a single admin);
- ``concurrent``: N clients rotating N environments in a loop (throughput under load).

Usage: ``.venv/bin/python benchmarks/issuer_rotate.py [--seconds 8] [--clients 8]
[--databases sqlite,postgres]``
Runs for about 4 x --seconds plus start-up (< 1 min by default).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.dev import mint_admin_pat  # noqa: E402
from shared.broker import EmbeddedBroker, free_port  # noqa: E402

POSTGRES_ADMIN = os.environ.get("STREAMTOKEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def postgres_database() -> Iterator[str | None]:
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"  PostgreSQL unreachable ({type(exc).__name__}); skipping it")
        yield None
        return
    name = "bench_" + uuid.uuid4().hex[:10]
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def issuer_process(
    database_url: str, bootstrap: str, data_dir: Path, **extra_env: str
) -> Iterator[tuple[str, str]]:
    """The issuer as a process; ``extra_env`` (e.g. a broker principal's ``STREAMTOKEN_KAFKA_*``) last."""
    port = free_port()
    jwt_secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "STREAMTOKEN_ENV": "test",
        "STREAMTOKEN_DATA_DIR": str(data_dir),
        "STREAMTOKEN_LOG_LEVEL": "WARNING",
        "STREAMTOKEN_ISSUER_PORT": str(port),
        "STREAMTOKEN_ISSUER_DATABASE_URL": database_url,
        "STREAMTOKEN_ISSUER_JWT_SECRET": jwt_secret,
        "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMTOKEN_KAFKA_TOPIC": f"bench-{uuid.uuid4().hex[:8]}",
        **extra_env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.issuer"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the issuer did not start")
            time.sleep(0.1)
        # PATs are records now (issue 11): the issuer's own bootstrap command writes one.
        yield url, mint_admin_pat({k: v for k, v in env.items() if k.startswith("STREAMTOKEN_")})
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_load(url: str, pat: str, environments: list[str], clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    errors: list[str] = []

    def worker(index: int) -> None:
        env_id = environments[index % len(environments)]
        mine: list[float] = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {pat}"}, timeout=30) as client:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                response = client.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
                mine.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:100]}")
                    return
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    if errors:
        raise RuntimeError(f"rotations failed: {errors[:3]}")
    return latencies


def report(database: str, load: str, latencies: list[float], seconds: float) -> None:
    print(
        f"  {database:<9} {load:<11} rotations={len(latencies):>6}  "
        f"throughput={len(latencies) / seconds:8.1f}/s  "
        f"p50={statistics.median(latencies) * 1000:7.2f} ms  p99={percentile(latencies, 99) * 1000:7.2f} ms  "
        f"max={max(latencies) * 1000:7.2f} ms"
    )


def bench(database: str, url_of_db: str, bootstrap: str, args: argparse.Namespace, tmp: Path) -> None:
    with issuer_process(url_of_db, bootstrap, tmp / database) as (url, pat):
        headers = {"Authorization": f"Bearer {pat}"}
        environments = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for i in range(args.clients):
                body = {"org": "bench", "project": database, "name": f"env{i}"}
                response = client.post("/v1/environments", json=body)
                response.raise_for_status()
                environments.append(response.json()["id"])
            for env_id in environments:  # warm-up
                client.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").raise_for_status()
        report(database, "sequential", run_load(url, pat, environments[:1], 1, args.seconds), args.seconds)
        report(
            database,
            f"{args.clients} clients",
            run_load(url, pat, environments, args.clients, args.seconds),
            args.seconds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (one environment each)")
    parser.add_argument("--databases", default="sqlite,postgres")
    args = parser.parse_args()
    databases = args.databases.split(",")
    print(f"issuer rotate API: {os.cpu_count()} CPUs, loopback HTTP, relay publishing to an embedded broker")
    with tempfile.TemporaryDirectory() as tmp_dir, EmbeddedBroker(port=free_port()) as broker:
        tmp = Path(tmp_dir)
        if "sqlite" in databases:
            bench("sqlite", f"sqlite:///{tmp / 'issuer.db'}", broker.bootstrap_servers, args, tmp)
        if "postgres" in databases:
            with postgres_database() as url:
                if url:
                    bench("postgres", url, broker.bootstrap_servers, args, tmp)


if __name__ == "__main__":
    main()
