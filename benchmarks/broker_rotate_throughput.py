"""Rotations per second through the issuer API with broker reconciliation on vs off, same code, same broker.

    .venv/bin/python benchmarks/broker_rotate_throughput.py [--rounds 3] [--seconds 5] [--clients 8]

One Apache Kafka (``shared.kafka_broker``, fresh data dir) and two issuer processes of this tree on it, each
as the issuer's own principal on its own control topic and SQLite database: one with
``STREAMTOKEN_ISSUER_BROKER_ACCESS=scram`` (its outbox relay makes the broker's SCRAM users and ACLs match
each environment before publishing it), one with ``=off`` (the relay only publishes). Rounds alternate
which goes first; in a round each gets the same loads, one after the other, never at the same time:

- ``sequential``: one client, one rotation at a time on one environment;
- ``N clients``: N clients rotating N environments in a loop.

Two rates are printed. **API rate** = rotate calls answered 200 per second of the load window (what an
admin sees; the call commits the rotation and its outbox row, it does not wait for the broker). **Applied
rate** (broker access on only) = the same rotations divided by the time from the window's start until
``GET …/propagation`` says ``applied`` for every environment, i.e. the rate at which the relay got them onto
the broker. The next load starts only once the relay has caught up, so a backlog never overlaps the other
issuer's window. Ratios on/off are per round; the median is printed. Target: API ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker_common import load_average, percentile  # noqa: E402
from issuer_rotate import issuer_process, run_load  # noqa: E402

from shared.broker import free_port  # noqa: E402
from shared.broker_access import ISSUER_USER  # noqa: E402
from shared.kafka_broker import ApacheKafkaBroker  # noqa: E402


def all_applied(client: httpx.Client, environments: list[str], timeout: float = 120.0) -> float:
    """Poll until every environment's propagation says applied; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    pending = list(environments)
    while pending and time.monotonic() < deadline:
        state = client.get(f"/v1/environments/{pending[0]}/streaming-tokens/propagation").json()
        if state["broker"] in {"applied", "off"}:
            pending.pop(0)
        else:
            time.sleep(0.005)
    if pending:
        raise TimeoutError(f"{len(pending)} environments not applied in {timeout} s")
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(f"rotate API, broker access on vs off, Apache Kafka: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        broker = ApacheKafkaBroker(tmp / "kafka", port=free_port()).start()
        try:
            issuers = {}
            from contextlib import ExitStack

            with ExitStack() as stack:
                for mode in ("scram", "off"):
                    topic = f"streaming-tokens-bench-{mode}-{uuid.uuid4().hex[:6]}"
                    broker.grant_services(topic)
                    env = broker.environment_for(ISSUER_USER, topic=topic)
                    env["STREAMTOKEN_ISSUER_BROKER_ACCESS"] = mode
                    (tmp / mode).mkdir()
                    url, pat = stack.enter_context(
                        issuer_process(
                            f"sqlite:///{tmp / mode / 'issuer.db'}",
                            broker.bootstrap_servers,
                            tmp / mode,
                            **env,
                        )
                    )
                    client = stack.enter_context(
                        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {pat}"}, timeout=30)
                    )
                    environments = []
                    for i in range(args.clients):
                        body = {"org": "bench", "project": mode, "name": f"env{i}"}
                        response = client.post("/v1/environments", json=body)
                        response.raise_for_status()
                        environments.append(response.json()["id"])
                    for env_id in environments:  # warm-up
                        client.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").raise_for_status()
                    all_applied(client, environments)
                    issuers[mode] = (url, pat, client, environments)
                rounds(issuers, args)
        finally:
            broker.stop()
    print(f"done: {load_average()}")


def rounds(issuers: dict[str, tuple[str, str, httpx.Client, list[str]]], args: argparse.Namespace) -> None:
    loads = [("sequential", 1), (f"{args.clients} clients", args.clients)]
    api: dict[tuple[str, str], list[float]] = {}
    applied: dict[str, list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        order = ["scram", "off"] if round_ % 2 else ["off", "scram"]
        for load, clients in loads:
            for mode in order:
                url, pat, client, environments = issuers[mode]
                used = environments[:clients]
                started = time.monotonic()
                latencies = run_load(url, pat, used, clients, args.seconds)
                done = all_applied(client, used)
                rate = len(latencies) / args.seconds
                api.setdefault((load, mode), []).append(rate)
                line = (
                    f"round {round_} {load:<11} broker access {mode:<5}: API {rate:7.1f}/s "
                    f"(p50 {statistics.median(latencies) * 1000:6.1f} ms, "
                    f"p99 {percentile(latencies, 99) * 1000:6.1f} ms)"
                )
                if mode == "scram":
                    applied_rate = len(latencies) / (done - started)
                    applied.setdefault(load, []).append(applied_rate)
                    line += (
                        f", applied at the broker {applied_rate:7.1f}/s (last {(done - started):.2f} s in)"
                    )
                print(f"{line}  [{load_average()}]", flush=True)
    for load, _ in loads:
        on, off = api[(load, "scram")], api[(load, "off")]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        print(
            f"{load:<11}: API median on {statistics.median(on):.1f}/s, off {statistics.median(off):.1f}/s, "
            f"ratio on/off median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); "
            f"applied at the broker median {statistics.median(applied[load]):.1f}/s, "
            f"ratio applied/off {statistics.median(applied[load]) / statistics.median(off):.2f} "
            "(target API >= 0.5)"
        )


if __name__ == "__main__":
    main()
