"""Polls the resolver replicas' propagation view (``GET /v1/environments/{id}/generation``) with httpx;
the answer is ``shared.models.resolver.GenerationAnswer``, the model the resolver's route declares.

Every replica is asked at once (a small thread pool), each with a short timeout, so one slow or dead
replica costs at most that timeout. An unreachable replica or an unexpected answer becomes a
:class:`~services.issuer.ports.ResolverGeneration` with ``error`` set (one line, no secret), never an
exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from services.issuer.ports import ResolverGeneration
from shared.models.resolver import GenerationAnswer

INTERNAL_KEY_HEADER = "X-Streamtoken-Internal-Key"
MAX_PARALLEL = 16


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class HttpResolverProbe:
    """:class:`~services.issuer.ports.ResolverProbe` over HTTP."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        internal_key: str | None = None,
        timeout_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.urls = tuple(urls)
        headers = {INTERNAL_KEY_HEADER: internal_key} if internal_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            limits=httpx.Limits(max_connections=max(4 * len(self.urls), 10)),
            follow_redirects=False,
        )
        self._pool = (
            ThreadPoolExecutor(min(len(self.urls), MAX_PARALLEL), thread_name_prefix="issuer-resolver-poll")
            if len(self.urls) > 1
            else None
        )

    def generations(self, environment_id: str) -> list[ResolverGeneration]:
        if self._pool is None:
            return [self._ask(url, environment_id) for url in self.urls]
        return list(self._pool.map(lambda url: self._ask(url, environment_id), self.urls))

    def _ask(self, url: str, environment_id: str) -> ResolverGeneration:
        target = f"{url}/v1/environments/{quote(environment_id, safe='')}/generation"
        try:
            response = self._client.get(target)
        except httpx.TimeoutException as exc:
            return ResolverGeneration(url, None, False, _one_line(f"timed out ({type(exc).__name__})"))
        except httpx.HTTPError as exc:
            return ResolverGeneration(
                url, None, False, _one_line(f"unreachable ({type(exc).__name__}: {exc})")
            )
        if response.status_code == 401:
            return ResolverGeneration(
                url,
                None,
                False,
                "401: the resolver wants another internal key (STREAMTOKEN_ISSUER_RESOLVER_INTERNAL_KEY)",
            )
        if response.status_code != 200:
            return ResolverGeneration(url, None, False, f"HTTP {response.status_code} from the resolver")
        try:
            # strict: a generation is a JSON integer (never true or "7"), ready a JSON boolean
            answer = GenerationAnswer.model_validate_json(response.content, strict=True)
        except ValidationError:
            return ResolverGeneration(url, None, False, "not a resolver's generation answer")
        return ResolverGeneration(url, answer.generation, answer.ready)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
