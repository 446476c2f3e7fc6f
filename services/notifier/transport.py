"""An ``httpx`` transport whose connection pool is aiohttp's.

The notifier talks HTTP through ``httpx.AsyncClient`` everywhere. For webhook fan-out, httpx's default
transport (httpcore) costs several milliseconds of CPU a request on our 2-core machines (~200 requests/s
against a fast local receiver); aiohttp's client does the same work more than ten times faster. This
transport keeps the httpx API and puts aiohttp underneath. Select it with
``STREAMTOKEN_NOTIFIER_HTTP_TRANSPORT`` (``aiohttp``, the default, or ``httpcore``).
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, timeout: float) -> None:
        self._max_connections = max_connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [
            (key.decode("latin-1"), value.decode("latin-1"))
            for key, value in request.headers.raw
            if key.lower().decode("latin-1") not in _HOP_BY_HOP
        ]
        try:
            async with self._get_session().request(
                request.method, str(request.url), data=body, headers=headers, allow_redirects=False
            ) as response:
                content = await response.read()
                status = response.status
                raw_headers = list(response.raw_headers)
        except TimeoutError:
            raise httpx.TimeoutException("the request timed out", request=request) from None
        except (aiohttp.ClientError, asyncio.CancelledError, OSError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
