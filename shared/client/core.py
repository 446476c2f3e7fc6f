"""What every client of our APIs shares: one error type, one timeout and retry policy, one request loop.

Every service answers an error with ``shared.errors.error_body``: ``{"error": code, "message": sentence,
...more}``. :class:`ApiCallError` carries that code, message and status (and the whole body, e.g. the
clients of a 409 ``token_1_in_use``); a lost connection or an answer that is not the documented shape is an
:class:`ApiCallError` too, with ``status=None`` or the status and code ``bad_answer``. No message ever
quotes a token or a PAT: the server's messages are scrubbed where they are made, ours name none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.logs import scrub

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

UNREACHABLE = "unreachable"  # no answer: refused, reset, timed out
INTERNAL_KEY_HEADER = "X-Streamtoken-Internal-Key"  # a service's call to another with its internal key
BAD_ANSWER = "bad_answer"  # an answer that is not the documented shape
RETRY_STATUSES = frozenset({502, 503, 504})


class ApiCallError(Exception):
    """A call to one of our services failed.

    ``status`` is the HTTP status when the service answered (``None``: it did not), ``code`` the error
    body's stable code (``unreachable`` and ``bad_answer`` are ours), ``message`` its sentence, ``body``
    the whole error body (``{}`` when there is none), ``cause`` the httpx error of an unreachable service.
    """

    def __init__(
        self,
        service: str,
        base_url: str,
        status: int | None,
        code: str,
        message: str,
        body: Mapping[str, Any] | None = None,
        *,
        cause: httpx.HTTPError | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url
        self.status = status
        self.code = code
        self.message = scrub(message)
        self.body: dict[str, Any] = dict(body or {})
        self.cause = cause
        super().__init__(self.describe())

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def timed_out(self) -> bool:
        """No answer within the policy's timeout (connect, read, write or pool)."""
        return isinstance(self.cause, httpx.TimeoutException)

    @property
    def refused(self) -> bool:
        """A 4xx other than 408/429: asking again the same way will not help until something changes."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)

    @property
    def server_message(self) -> str:
        """The ``message`` of the service's JSON error body, ``""`` when it sent none (at most 200 chars)."""
        return scrub(str(self.body.get("message", "")))[:200]

    def describe(self) -> str:
        """One line: ``404 not_found: no environment acme-x`` or ``cannot reach the issuer at URL: ...``."""
        if self.status is None:
            return f"cannot reach the {self.service} at {self.base_url}: {self.message}; is it running?"
        return f"{self.status} {self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Timeouts and retries, the same for every client: ``timeout`` seconds per attempt; an idempotent
    call (GET/PUT/DELETE, or a POST with an Idempotency-Key) whose connection is lost or that is answered
    502/503/504 is sent again up to ``retries`` more times, ``backoff * attempt`` seconds apart (at most
    ``max_backoff``). Non-idempotent calls are sent once."""

    timeout: float | None = 10.0  # None: the timeout of the httpx client passed in
    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * attempt, self.max_backoff)


DEFAULT_POLICY = Policy()
NO_RETRY = Policy(retries=0)  # for callers with retry loops of their own (the agent, the notifier's check)


@dataclass(frozen=True, slots=True)
class Call:
    """One request: what it is, which statuses are success, and whether sending it twice is harmless."""

    method: str
    path: str
    what: str  # for messages: "reading the tokens of acme-x"
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ok: tuple[int, ...] = (200,)

    @property
    def idempotent(self) -> bool:
        if self.method in ("GET", "HEAD", "PUT", "DELETE"):
            return True
        return any(k.lower() == "idempotency-key" for k in self.headers)


def error_from(service: str, base_url: str, response: httpx.Response) -> ApiCallError:
    """The :class:`ApiCallError` of an error answer (our JSON error body, or anything else)."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = str(body.get("message") or body["error"])
        return ApiCallError(service, base_url, response.status_code, body["error"], message, body)
    text = response.text[:200].strip() or response.reason_phrase
    return ApiCallError(service, base_url, response.status_code, f"http_{response.status_code}", text)


def parse(service: str, base_url: str, response: httpx.Response, kind: type[T]) -> T:
    """The answer's JSON as ``kind`` (a pydantic model or any type pydantic validates)."""
    try:
        return TypeAdapter(kind).validate_json(response.content)
    except ValidationError as exc:
        raise ApiCallError(
            service,
            base_url,
            response.status_code,
            BAD_ANSWER,
            f"the {service}'s answer is not the documented shape ({exc.error_count()} errors)",
        ) from None


class _Base:
    service = "service"

    def __init__(
        self,
        base_url: str,
        *,
        bearer: str | None = None,
        policy: Policy = DEFAULT_POLICY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self._headers = {"Accept": "application/json", **(headers or {})}
        if bearer is not None:
            self._headers["Authorization"] = f"Bearer {bearer}"

    def _build(self, call: Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": f"{self.base_url}{call.path}",
            "json": call.json,
            "params": dict(call.params) if call.params else None,
            "headers": {**self._headers, **call.headers},
        }

    def _unreachable(self, exc: httpx.HTTPError) -> ApiCallError:
        return ApiCallError(self.service, self.base_url, None, UNREACHABLE, type(exc).__name__, cause=exc)

    def _check(self, call: Call, response: httpx.Response) -> httpx.Response:
        if response.status_code not in call.ok:
            raise error_from(self.service, self.base_url, response)
        return response


class SyncClient(_Base):
    """A blocking client on one ``httpx.Client`` (connections reused; close it, or use ``with``)."""

    def __init__(
        self,
        base_url: str,
        *,
        bearer: str | None = None,
        policy: Policy = DEFAULT_POLICY,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, bearer=bearer, policy=policy, headers=headers)
        self._http = httpx.Client(timeout=policy.timeout, transport=transport)

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> httpx.Response:
        """Send ``call`` (retried per the policy); its answer if its status is one of ``call.ok``."""
        attempts = 1 + (self.policy.retries if call.idempotent else 0)
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(**self._build(call))
            except httpx.HTTPError as exc:
                if attempt < attempts:
                    time.sleep(self.policy.delay(attempt))
                    continue
                raise self._unreachable(exc) from None
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                time.sleep(self.policy.delay(attempt))
                continue
            return self._check(call, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, call: Call, kind: type[T]) -> T:
        return parse(self.service, self.base_url, self.send(call), kind)


class AsyncClient(_Base):
    """The same on ``httpx.AsyncClient``; pass ``client`` to share one pool (then it is not closed here)."""

    def __init__(
        self,
        base_url: str,
        *,
        bearer: str | None = None,
        policy: Policy = DEFAULT_POLICY,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, bearer=bearer, policy=policy, headers=headers)
        self._owned = client is None
        self._http = client or httpx.AsyncClient(timeout=policy.timeout, transport=transport)

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def send(self, call: Call) -> httpx.Response:
        attempts = 1 + (self.policy.retries if call.idempotent else 0)
        for attempt in range(1, attempts + 1):
            try:
                timeout = httpx.USE_CLIENT_DEFAULT if self.policy.timeout is None else self.policy.timeout
                response = await self._http.request(**self._build(call), timeout=timeout)
            except httpx.HTTPError as exc:
                if attempt < attempts:
                    await asyncio.sleep(self.policy.delay(attempt))
                    continue
                raise self._unreachable(exc) from None
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                await asyncio.sleep(self.policy.delay(attempt))
                continue
            return self._check(call, response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, call: Call, kind: type[T]) -> T:
        return parse(self.service, self.base_url, await self.send(call), kind)
