"""Downtime strategy at fleet scale: from the rotate call until N deployments under agents all produce again.

Each deployment is ``examples/f1_producer.py`` (an unmodified quixstreams app) under ``streamtoken run``.
"Producing again" is the restarted app's first flush of 25 messages to the broker (its first
"messages produced" line after its second start), so the figure covers the notifier's webhook, the agent's
graceful stop, the new token fetched from the issuer, the app's start and its Portal API calls to the
resolver. Output files are polled every 50 ms, so each time is good to ~0.05 s.

    .venv/bin/python benchmarks/agent_fleet_restart.py --sizes 10 25 50 --restart-concurrency 0
    .venv/bin/python benchmarks/agent_fleet_restart.py --sizes 50 --restart-concurrency 10
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.broker import EmbeddedBroker, free_port  # noqa: E402
from tests.e2e.harness import PRODUCED, Deployment, RunningStack, running_stack, wait_for  # noqa: E402


def produced_after_restart(deployment: Deployment, since: int) -> bool:
    """The app started again after output offset ``since`` (the rotation) and flushed messages since."""
    output = deployment.output()
    restart = output.find("f1_producer: producing to", since)
    return restart >= 0 and PRODUCED.search(output, restart) is not None


def agent_timeline(deployment: Deployment, rotated_wall: float) -> tuple[float, float] | None:
    """From the agent's own log: seconds from the rotate call to the webhook, and from the webhook to the
    new child started."""
    notified = started = None
    for line in deployment.agent_log():
        at = datetime.fromisoformat(str(line.get("timestamp"))).timestamp()
        if line.get("event") == "rotation_notified" and notified is None and at >= rotated_wall:
            notified = at
        elif line.get("event") == "child_started" and notified is not None and started is None:
            started = at
    if notified is None or started is None:
        return None
    return notified - rotated_wall, started - notified


def fleet_rss_mb(deployments: list[Deployment]) -> float:
    total = 0
    for d in deployments:
        if d.child.process is None:
            continue
        try:
            agent = psutil.Process(d.child.process.pid)
            total += sum(p.memory_info().rss for p in [agent, *agent.children(recursive=True)])
        except psutil.Error:
            continue
    return total / 1e6


def run_fleet(stack: RunningStack, size: int, interval: float) -> dict[str, float]:
    env_id = stack.create_environment(f"fleet{size}")
    tokens = stack.tokens(env_id)
    old_1 = tokens["token_1"]["token"]
    wait_for("the resolver to learn the tokens", lambda: stack.whoami(old_1) == 200)
    began = time.monotonic()
    deployments = [
        stack.run(f"fleet{size}-{i}", ["--environment", env_id], ["--interval", str(interval)])
        for i in range(size)
    ]

    shown = [-1]

    def progress(count: int, what: str) -> None:
        if count != shown[0]:
            shown[0] = count
            print(f"\r  {count}/{size} {what}", end="", flush=True)

    def all_producing() -> bool:
        ready = sum(1 for d in deployments if d.produced())
        progress(ready, "deployments producing")
        return ready == size

    wait_for("every deployment to produce", all_producing, timeout=60 + 10 * size, every=0.5)
    print(f" (fleet up in {time.monotonic() - began:.1f} s)")
    rss = fleet_rss_mb(deployments)

    shown[0] = -1
    offsets = [len(d.output()) for d in deployments]  # a crash restart before this is not counted
    rotated_at = time.monotonic()
    rotated_wall = time.time()
    response = stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
    assert response.status_code == 200, response.text
    back: dict[int, float] = {}

    def all_back() -> bool:
        now = time.monotonic()
        for i, d in enumerate(deployments):
            if i not in back and produced_after_restart(d, offsets[i]):
                back[i] = now - rotated_at
        progress(len(back), "producing again with the new token")
        return len(back) == size

    wait_for("every deployment to produce again", all_back, timeout=120 + 10 * size, every=0.05)
    print()
    refused = stack.whoami(old_1)
    for d in deployments:
        if d.child.process is not None and d.child.process.poll() is None:
            d.child.process.send_signal(signal.SIGTERM)
    for d in deployments:
        if d.child.process is not None:
            d.child.process.wait(60)
    times = sorted(back.values())
    timelines = [t for t in (agent_timeline(d, rotated_wall) for d in deployments) if t is not None]
    return {
        "webhook_s": statistics.median(t[0] for t in timelines) if timelines else float("nan"),
        "child_restarted_s": statistics.median(t[1] for t in timelines) if timelines else float("nan"),
        "size": size,
        "all_back_s": times[-1],
        "p50_s": statistics.median(times),
        "first_s": times[0],
        "fleet_rss_mb": rss,
        "old_token_status": refused,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument(
        "--restart-concurrency",
        type=int,
        default=0,
        help="the notifier's per-environment limit on restarts in flight (0: none; the service default is 1)",
    )
    parser.add_argument(
        "--interval", type=float, default=0.01, help="seconds between an app's messages (it reports every 25)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp, EmbeddedBroker(port=free_port()) as broker:
        settings = {"STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY": str(args.restart_concurrency)}
        with running_stack(broker, Path(tmp), **settings) as stack:
            print(f"stack up; notifier restart concurrency {args.restart_concurrency or 'unlimited'}")
            results = []
            for size in args.sizes:
                print(f"fleet of {size}:")
                results.append(run_fleet(stack, size, args.interval))
    print()
    print(
        "deployments | all producing again | median | first | fleet RSS (agents + apps) | old Token 1"
        " | webhook after rotate (median) | child restarted after webhook (median)"
    )
    for r in results:
        print(
            f"{r['size']:>11} | {r['all_back_s']:>17.2f} s | {r['p50_s']:>5.2f} s | {r['first_s']:>4.2f} s"
            f" | {r['fleet_rss_mb']:>22,.0f} MB | HTTP {r['old_token_status']:.0f}"
            f" | {r['webhook_s']:.2f} s | {r['child_restarted_s']:.2f} s"
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(
            f"growth {small['size']:.0f} -> {large['size']:.0f} deployments: "
            f"x{large['all_back_s'] / small['all_back_s']:.2f} time to all back, "
            f"x{large['size'] / small['size']:.1f} deployments"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
