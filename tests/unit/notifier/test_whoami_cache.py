"""Finding 15 at the notifier: a flood of unknown tokens neither evicts valid ones nor floods the log."""

from __future__ import annotations

import httpx

from services.notifier.auth import ResolverWhoami
from shared.tokens import fingerprint, generate_token

VALID = generate_token()


async def test_unknown_tokens_cannot_evict_valid_ones_and_the_cache_stays_bounded() -> None:
    calls: list[str] = []

    def resolver(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        calls.append(token)
        if token == VALID:
            return httpx.Response(
                200, json={"environment_id": "a-b-c", "slot": 1, "token_id": "t", "generation": 1}
            )
        return httpx.Response(401, json={"error": "invalid_token", "message": "no"})

    whoami = ResolverWhoami("http://resolver", 300, transport=httpx.MockTransport(resolver), max_entries=100)
    assert (await whoami.whoami(VALID)) is not None
    for _ in range(1000):  # cheap for an attacker: anyone can mint well-formed tokens
        assert await whoami.whoami(generate_token()) is None
    assert (await whoami.whoami(VALID)) is not None
    assert calls.count(VALID) == 1  # still cached
    assert whoami.cached_entries <= 200
    await whoami.aclose()


def test_refusal_logs_are_sampled() -> None:
    from services.notifier.auth import LogSampler

    now = [0.0]
    sampler = LogSampler(interval=10.0, clock=lambda: now[0])
    assert sampler.take("token_refused") == 0  # the first is logged, nothing suppressed before it
    assert all(sampler.take("token_refused") is None for _ in range(500))
    now[0] = 10.5
    assert sampler.take("token_refused") == 500  # the next one says how many were not logged
    assert fingerprint(VALID)  # tokens are only ever logged as fingerprints
