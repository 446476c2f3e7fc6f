"""Connection pools under the webhook ``httpx.AsyncClient``.

The notifier talks HTTP through ``httpx.AsyncClient`` everywhere; for webhook fan-out the pool underneath is
what costs CPU. ``STREAMTOKEN_NOTIFIER_HTTP_TRANSPORT`` selects it:

- ``asyncio`` (default): :class:`AsyncioTransport`, a small HTTP/1.1 keep-alive pool written directly on
  asyncio protocols with httptools' response parser (httptools comes with ``uvicorn[standard]``). It does
  only what a webhook POST needs: one request per connection at a time, keep-alive reuse, TLS, a total
  timeout, no redirects, no decompression.
- ``httpcore``: httpx's own transport (several times slower per request). It checks no resolved address:
  only the URL checks apply, so prefer ``asyncio`` where webhook hosts are names.

The pool of this module resolves a webhook's host itself, refuses the host when any address it
resolves to is not allowed (public, or in a listed network: :class:`WebhookAddressPolicy`), and connects to
the address it checked, so a name cannot point the notifier at an internal service. It reads at most
``MAX_RESPONSE_BODY`` bytes of an answer (the rest is dropped with the connection) and refuses answers whose
headers exceed ``MAX_RESPONSE_HEADERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import httpx

from services.notifier.domain import IPAddress, is_public_address

MAX_RESPONSE_BODY = 64 * 1024  # a webhook answer's body is only ever logged, never needed whole
MAX_RESPONSE_HEADERS = 64 * 1024
MAX_RESPONSE_HEADER_COUNT = 200

AddressCheck = Callable[[IPAddress], bool]
Resolve = Callable[[str, int], Awaitable[list[str]]]


class AddressNotAllowed(httpx.ConnectError):
    """The webhook host resolves to an address the notifier may not connect to."""


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def checked_addresses(host: str, port: int, allowed: AddressCheck, resolve: Resolve) -> list[str]:
    """The addresses ``host`` resolves to, in order and without repeats, if every one is allowed; else
    :class:`OSError`/:class:`_AddressRefused` (a name answering one public and one internal address is
    refused as a whole, so no answer order or rebinding can pick the internal one)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        addresses = list(dict.fromkeys(await resolve(host, port)))
    else:
        addresses = [str(literal)]
    if not addresses:
        raise OSError("the webhook host resolved to no address")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise _AddressRefused() from None
        if not allowed(ip):
            raise _AddressRefused()
    return addresses


class _AddressRefused(Exception):
    def __str__(self) -> str:
        return "the webhook host resolves to an address that is not allowed"


# --- the asyncio pool -------------------------------------------------------------------------------------

Origin = tuple[bytes, str, int]  # scheme, host, port


class _ConnectionClosed(Exception):
    """The peer closed the connection (or it broke) before a complete response."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 client connection; one request at a time; the response is parsed by httptools."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.received_any = False
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self.header_bytes = 0
        self.body_bytes = 0
        self.too_large: str | None = None  # what exceeded its bound

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.waiter is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_ConnectionClosed("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(_ConnectionClosed(f"invalid HTTP response: {exc}"))
        if self.too_large == "headers":
            self._fail(_ConnectionClosed("the response headers are larger than the notifier reads"))
            self.close()
        elif self.too_large == "body" and self.waiter is not None and not self.waiter.done():
            # Enough of the answer: the status is known, the rest is dropped with the connection.
            self.keep_alive = False
            self.waiter.set_result(None)
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_complete and not self.complete and exc is None and not self._framed():
            self.on_message_complete()  # an HTTP/1.0-style body that ends with the connection
            return
        self._fail(_ConnectionClosed(f"the connection was closed{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_RESPONSE_HEADERS or len(self.headers) >= MAX_RESPONSE_HEADER_COUNT:
            self.too_large = "headers"
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        room = MAX_RESPONSE_BODY - self.body_bytes
        if len(body) > room:
            body = body[:room]
            self.too_large = self.too_large or "body"
        if body:
            self.body.append(body)
            self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.too_large == "headers":
            return
        self.complete = True
        # Read it now: httptools resets it once feed_data() returns.
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # ours
    def _framed(self) -> bool:
        return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one serialised request; (status, headers, body, connection reusable)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.headers = []
        self.body = []
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.header_bytes = self.body_bytes = 0
        self.too_large = None
        self.requests += 1
        self.transport.write(data)
        try:
            await self.waiter
        finally:
            self.waiter = None
        reusable = self.usable and self.keep_alive and self.too_large is None
        return self.parser.get_status_code(), self.headers, b"".join(self.body), reusable


class AsyncioTransport(httpx.AsyncBaseTransport):
    """A keep-alive HTTP/1.1 connection pool for webhook POSTs, at most ``max_connections`` at once.

    Idle connections are kept per origin (at most ``max_connections`` in all, the least recently used closed
    first) for ``keepalive_seconds``. A request that fails on a *reused* connection before any byte of the
    answer arrived (the server had closed it meanwhile) is sent once more on a new connection, as httpcore
    and browsers do; a receiver may therefore see a webhook twice, with the same ``webhook-id``.
    """

    def __init__(
        self,
        max_connections: int,
        timeout: float,
        keepalive_seconds: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        *,
        address_allowed: AddressCheck = is_public_address,
        resolve: Resolve | None = None,
    ) -> None:
        self._allowed = address_allowed
        self._resolve = resolve or _getaddrinfo
        self._max_connections = max_connections
        self._timeout = timeout
        self._keepalive = keepalive_seconds
        self._ssl_context = ssl_context
        self._in_use = 0  # requests holding one of the max_connections slots
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        self._by_origin: dict[Origin, list[_Connection]] = {}
        self._active: set[_Connection] = set()
        self.connections_opened = 0

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        port = url.port or (443 if scheme == b"https" else 80)
        origin: Origin = (scheme, url.host, port)
        body = await request.aread()
        head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for key, value in request.headers.raw:
            head += (key, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head) + body
        try:
            async with asyncio.timeout(self._timeout):
                await self._acquire()
                try:
                    status, headers, content = await self._send(origin, data)
                finally:
                    self._release()
        except TimeoutError:
            raise httpx.TimeoutException("the request timed out", request=request) from None
        except _AddressRefused as exc:
            raise AddressNotAllowed(str(exc), request=request) from None
        except (_ConnectionClosed, OSError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _acquire(self) -> None:
        # A plain counter: cheaper than asyncio.Semaphore on the path where a slot is free.
        if self._in_use < self._max_connections and not self._slot_waiters:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter  # _release hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # we were handed a slot but will not use it
            else:
                with contextlib.suppress(ValueError):  # _release may have dropped it already
                    self._slot_waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; _in_use stays
                return
        self._in_use -= 1

    async def _send(self, origin: Origin, data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        for _ in range(2):
            conn = self._take_idle(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin)
            self._active.add(conn)
            done = False
            try:
                status, headers, content, reusable = await conn.exchange(data)
                done = True
            except _ConnectionClosed:
                if reused and not conn.received_any:
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise
            finally:
                self._active.discard(conn)
                if not done:
                    conn.close()
            if reusable:
                self._put_idle(conn)
            else:
                conn.close()
            return status, headers, content
        raise _ConnectionClosed("the connection was closed before an answer")  # pragma: no cover

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        addresses = await checked_addresses(host, port, self._allowed, self._resolve)
        failure: OSError | None = None
        for address in addresses:  # the checked addresses only: never a second, unchecked resolution
            try:
                if scheme == b"https":
                    _, conn = await loop.create_connection(
                        lambda: _Connection(origin), address, port, ssl=self._ssl(), server_hostname=host
                    )
                else:
                    _, conn = await loop.create_connection(lambda: _Connection(origin), address, port)
            except OSError as exc:
                failure = exc
                continue
            self.connections_opened += 1
            return conn
        assert failure is not None
        raise failure

    def _take_idle(self, origin: Origin) -> _Connection | None:
        pool = self._by_origin.get(origin)
        now = time.monotonic()
        found: _Connection | None = None
        while pool:
            conn = pool.pop()
            self._idle.pop(conn, None)
            if conn.usable and now - conn.idle_since < self._keepalive:
                found = conn
                break
            conn.close()
        if pool is not None and not pool:
            del self._by_origin[origin]
        return found

    def _put_idle(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._by_origin.setdefault(conn.origin, []).append(conn)
        self._idle[conn] = None
        while len(self._idle) > self._max_connections:
            oldest, _ = self._idle.popitem(last=False)
            pool = self._by_origin.get(oldest.origin)
            if pool is not None:
                pool.remove(oldest)
                if not pool:
                    del self._by_origin[oldest.origin]
            oldest.close()

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def aclose(self) -> None:
        for conn in [*self._idle, *self._active]:
            conn.close()
        self._idle.clear()
        self._by_origin.clear()
        self._active.clear()
