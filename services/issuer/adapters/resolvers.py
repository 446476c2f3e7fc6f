"""Polls the resolver replicas' propagation view (``GET /v1/environments/{id}/generation``) through
:class:`shared.client.ResolverClient`, with the resolvers' internal key when one is set; the answer is
``shared.models.resolver.GenerationAnswer`` (strict), the model the resolver's route declares.

Every replica is asked at once (a small thread pool), each once with a short timeout, so one slow or dead
replica costs at most that timeout. An unreachable replica or an unexpected answer becomes a
:class:`~services.issuer.ports.ResolverGeneration` with ``error`` set (one line, no secret), never an
exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from services.issuer.ports import ResolverGeneration
from shared.client import BAD_ANSWER, INTERNAL_KEY_HEADER, ApiCallError, Policy, ResolverClient

__all__ = ["INTERNAL_KEY_HEADER", "MAX_PARALLEL", "HttpResolverProbe"]

MAX_PARALLEL = 16


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _reason(exc: ApiCallError) -> str:
    if exc.unreachable:
        if exc.timed_out:
            return _one_line(f"timed out ({exc.message})")
        cause = exc.cause
        return _one_line(f"unreachable ({type(cause).__name__}: {cause})" if cause else exc.message)
    if exc.status == 401:
        return "401: the resolver wants another internal key (STREAMTOKEN_ISSUER_RESOLVER_INTERNAL_KEY)"
    if exc.code == BAD_ANSWER:
        return "not a resolver's generation answer"
    return f"HTTP {exc.status} from the resolver"


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
        policy = Policy(timeout=timeout_s, retries=0)
        headers = {INTERNAL_KEY_HEADER: internal_key} if internal_key else None
        self._clients = {
            url: ResolverClient(url, policy=policy, transport=transport, headers=headers) for url in self.urls
        }
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
        try:
            answer = self._clients[url].generation(environment_id)
        except ApiCallError as exc:
            return ResolverGeneration(url, None, False, _reason(exc))
        return ResolverGeneration(url, answer.generation, answer.ready)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()
