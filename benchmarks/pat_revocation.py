"""How soon a revoked PAT is refused, on the replica that revoked it and on another one (issue 11).

Two issuer processes share one database (PostgreSQL, or the same SQLite file); each PAT check reads the
store through a per-replica cache (``STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S``, default 5 s). Each round: mint a
member PAT through replica A, use it on both replicas (so both cache it), revoke it through A, then poll
``GET /v1/environments`` with it on A and on B every 20 ms until 401. Prints per replica the median, p90 and
max of revoke → first 401 over the rounds, against the configured TTL.

Usage: ``.venv/bin/python benchmarks/pat_revocation.py [--rounds 10] [--ttl 5] [--database sqlite|postgres]``
Takes about rounds x TTL seconds (~1 min by default). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from issuer_rotate import issuer_process, postgres_database  # noqa: E402

from shared.broker import EmbeddedBroker, free_port  # noqa: E402


def until_refused(client: httpx.Client, pat: str, since: float, deadline_s: float) -> float:
    """Seconds from ``since`` (the revocation) until ``client``'s replica refuses ``pat``."""
    while time.monotonic() - since < deadline_s:
        if client.get("/v1/environments", headers={"Authorization": f"Bearer {pat}"}).status_code == 401:
            return time.monotonic() - since
        time.sleep(0.02)
    raise RuntimeError(f"the revoked PAT was still accepted after {deadline_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=5.0, help="STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="pat-revocation-") as tmp:
        broker = stack.enter_context(EmbeddedBroker(port=free_port()))
        if args.database == "postgres":
            pg_url = stack.enter_context(postgres_database())
            if pg_url is None:
                raise SystemExit("--database postgres: PostgreSQL is unreachable")
            url = pg_url
        else:
            url = f"sqlite:///{Path(tmp) / 'issuer.db'}"
        shared_env = {
            "STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S": str(args.ttl),
            "STREAMTOKEN_ISSUER_JWT_SECRET": os.urandom(32).hex(),
            "STREAMTOKEN_ISSUER_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        }
        url_a, admin = stack.enter_context(
            issuer_process(url, broker.bootstrap_servers, Path(tmp) / "a", **shared_env)
        )
        url_b, _ = stack.enter_context(
            issuer_process(url, broker.bootstrap_servers, Path(tmp) / "b", **shared_env)
        )
        a = stack.enter_context(httpx.Client(base_url=url_a, timeout=10))
        b = stack.enter_context(httpx.Client(base_url=url_b, timeout=10))
        headers = {"Authorization": f"Bearer {admin}"}
        same: list[float] = []
        other: list[float] = []
        for round_ in range(args.rounds):
            created = a.post(
                "/v1/pats", json={"subject": f"bench-{round_}", "role": "member"}, headers=headers
            )
            created.raise_for_status()
            pat, pat_id = created.json()["token"], created.json()["id"]
            for client in (a, b):  # both replicas have it cached now
                assert (
                    client.get("/v1/environments", headers={"Authorization": f"Bearer {pat}"}).status_code
                    == 200
                )
            a.delete(f"/v1/pats/{pat_id}", headers=headers).raise_for_status()
            revoked_at = time.monotonic()
            same.append(until_refused(a, pat, revoked_at, args.ttl * 3))
            other.append(until_refused(b, pat, revoked_at, args.ttl * 3))
            print(f"round {round_ + 1}: refused by the revoking replica after {same[-1] * 1000:.0f} ms, "
                  f"by the other after {other[-1]:.2f} s", flush=True)  # fmt: skip

    def summary(values: list[float]) -> str:
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return f"median {statistics.median(values):.2f} s, p90 {p90:.2f} s, max {max(values):.2f} s"

    print(
        f"\n{args.rounds} revocations, {args.database}, PAT cache TTL {args.ttl:g} s, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  revoking replica: {summary(same)}")
    print(f"  other replica:    {summary(other)} (bound: the TTL)")


if __name__ == "__main__":
    main()
