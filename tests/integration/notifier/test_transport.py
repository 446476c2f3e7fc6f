"""The asyncio connection pool under the webhook httpx client, against scripted servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from services.notifier.delivery import webhook_client
from services.notifier.domain import WebhookAddressPolicy
from services.notifier.transport import AsyncioTransport

# (request number, request bytes) -> the response; None: never answer; b"": close without answering
Respond = Callable[[int, bytes], bytes | None]


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def scripted_server(respond: Respond, close_after_response: bool = False) -> AsyncIterator[Server]:
    server_state = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_state.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                server_state.requests.append(request)
                answer = respond(len(server_state.requests), request)
                if answer is None:
                    await asyncio.sleep(30)
                    return
                if not answer:
                    return
                writer.write(answer)
                await writer.drain()
                if close_after_response:
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}"
    async with server:
        yield server_state
        server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


LOOPBACK = WebhookAddressPolicy.from_entries(("127.0.0.1",))


def _client(max_connections: int = 4, timeout: float = 5.0) -> httpx.AsyncClient:
    transport = AsyncioTransport(max_connections, timeout, address_allowed=LOOPBACK.allows)
    return webhook_client(transport, timeout, max_connections)


async def test_connections_are_kept_alive_and_capped() -> None:
    async with scripted_server(lambda n, _: OK) as server, _client(max_connections=3) as client:
        for i in range(10):
            response = await client.post(f"{server.url}/hook/{i}", content=b'{"n":1}')
            assert (response.status_code, response.content) == (200, b"ok")
        assert server.connections == 1
        answers = await asyncio.gather(*(client.post(f"{server.url}/c/{i}", content=b"x") for i in range(30)))
        assert [a.status_code for a in answers] == [200] * 30
        assert server.connections <= 3
        assert len(server.requests) == 40


async def test_request_line_headers_and_body_reach_the_server() -> None:
    async with scripted_server(lambda n, _: OK) as server, _client() as client:
        await client.post(f"{server.url}/hooks/a?x=1", content=b'{"a":1}', headers={"webhook-id": "msg_1"})
    (request,) = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks/a?x=1 HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"webhook-id"] == b"msg_1"
    assert headers[b"content-length"] == b"7"
    assert headers[b"host"] == server.url.removeprefix("http://").encode()
    assert body == b'{"a":1}'


async def test_chunked_and_close_delimited_responses() -> None:
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with scripted_server(lambda n, _: chunked) as server, _client() as client:
        response = await client.post(server.url, content=b"x")
        assert (response.status_code, response.headers["retry-after"], response.content) == (
            503,
            "7",
            b"abcde",
        )
        await client.post(server.url, content=b"x")
        assert server.connections == 1  # reused after a chunked answer

    legacy = b"HTTP/1.0 202 Accepted\r\ncontent-type: text/plain\r\n\r\nbody until close"
    async with scripted_server(lambda n, _: legacy, close_after_response=True) as server, _client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=b"x")
            assert (response.status_code, response.content) == (202, b"body until close")
        assert server.connections == 2


async def test_connection_close_and_a_server_that_drops_idle_connections() -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    async with scripted_server(lambda n, _: closing) as server, _client() as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"x")).status_code == 200
        assert server.connections == 3

    # Keep-alive announced, but the server closes right after answering: the next request finds the pooled
    # connection dead (before or right after writing) and goes out once more on a fresh one.
    async with scripted_server(lambda n, _: OK, close_after_response=True) as server, _client() as client:
        for _ in range(4):
            await asyncio.sleep(0.05)
            assert (await client.post(server.url, content=b"x")).status_code == 200
        assert server.connections == 4
        assert len(server.requests) == 4


async def test_a_reused_connection_dropped_without_an_answer_is_retried_once_on_a_new_one() -> None:
    async with scripted_server(lambda n, _: b"" if n == 2 else OK) as server, _client() as client:
        assert (await client.post(server.url, content=b"1")).status_code == 200
        assert (await client.post(server.url, content=b"2")).status_code == 200  # dropped, then resent
        assert server.connections == 2
        assert len(server.requests) == 3
    # A fresh connection that drops is an error (the delivery is retried later), not resent at once.
    async with scripted_server(lambda n, _: b"") as server, _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(server.url, content=b"x")
        assert len(server.requests) == 1


async def test_timeouts_and_refused_connections_are_httpx_errors() -> None:
    async with scripted_server(lambda n, _: None) as server, _client(timeout=0.3) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post(server.url, content=b"x")
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(server.url, content=b"x")  # the server is gone now


async def test_requests_waiting_for_a_connection_time_out_without_leaking_it() -> None:
    async with scripted_server(lambda n, _: None if n <= 1 else OK) as server, _client(1, 0.3) as client:
        hanging = await asyncio.gather(
            *(client.post(server.url, content=b"x") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, httpx.TimeoutException) for r in hanging)
        assert len(server.requests) == 1  # the others never got the only connection
        assert (await client.post(server.url, content=b"x")).status_code == 200


async def test_garbage_answers_are_connection_errors() -> None:
    async with scripted_server(lambda n, _: b"SMTP ready\r\n\r\n") as server, _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(server.url, content=b"x")


async def test_the_webhook_client_keeps_no_cookies() -> None:
    with_cookie = b"HTTP/1.1 200 OK\r\nset-cookie: session=secret; Path=/\r\ncontent-length: 0\r\n\r\n"
    async with scripted_server(lambda n, _: with_cookie) as server, _client() as client:
        await client.post(f"{server.url}/a", content=b"x")
        await client.post(f"{server.url}/b", content=b"x")
        assert len(client.cookies) == 0
    assert b"session=secret" not in server.requests[1]


async def test_response_bodies_are_read_to_at_most_64_kib_and_headers_are_bounded() -> None:
    chunk = b"x" * 65536
    endless = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + (b"10000\r\n" + chunk + b"\r\n") * 80
    async with scripted_server(lambda n, _: endless) as server, _client() as client:
        response = await client.post(server.url, content=b"x")
        assert response.status_code == 200
        assert len(response.content) <= 65536
        # the connection that still had body coming is not reused
        assert (await client.post(server.url, content=b"x")).status_code == 200
        assert server.connections == 2
    huge_headers = b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"x-pad-%d: %s\r\n" % (i, b"y" * 1000) for i in range(100)
    )
    huge_headers += b"content-length: 0\r\n\r\n"
    async with scripted_server(lambda n, _: huge_headers) as server, _client() as client:
        with pytest.raises(httpx.ConnectError, match="headers"):
            await client.post(server.url, content=b"x")
