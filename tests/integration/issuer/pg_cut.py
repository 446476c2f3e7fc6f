"""A TCP proxy in front of the real PostgreSQL that can cut one connection exactly at ``COMMIT``: either
before the server sees it (the transaction rolls back) or after the server committed, swallowing its
answer (the transaction is applied and the client never hears so). A network fault injector for the
issuer's read-back of a cut-off commit; the database behind it is the real one.

It reads the wire protocol (3.0, no TLS: connect with ``sslmode=disable&gssencmode=disable``): messages
are a type byte and a length; the client's first message (startup) has no type byte.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Cut = Literal["before_commit", "after_commit"]
_WRITE_MARK = b"INSERT INTO outbox"  # a transaction that changes an environment (the relay's never do)


@dataclass
class _Connection:
    client: socket.socket
    server: socket.socket
    statements: dict[bytes, bytes] = field(default_factory=dict)  # prepared statement name -> its SQL
    writes: bool = False  # this transaction inserted into the outbox
    commit_pending: bool = False  # a COMMIT of such a transaction was forwarded
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class CommitCutter:
    """``with CommitCutter(5432) as cutter``: ``cutter.port`` forwards to PostgreSQL; ``cutter.arm(kind)``
    cuts the next commit of an environment change; ``cutter.cuts`` counts the cuts made. With
    ``refuse_after_cut`` every new connection after a cut is closed at once until :meth:`heal` (the
    database stays unreachable)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._armed: Cut | None = None
        self._lock = threading.Lock()
        self.cuts: list[Cut] = []
        self._stopping = False
        self.refuse_after_cut = False
        self._refusing = False

    def __enter__(self) -> CommitCutter:
        threading.Thread(target=self._accept, daemon=True, name="pg-cut-accept").start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping = True
        self._listener.close()

    def heal(self) -> None:
        self._refusing = False

    def arm(self, kind: Cut) -> None:
        with self._lock:
            self._armed = kind

    def _take(self, kind: Cut) -> bool:
        with self._lock:
            if self._armed != kind:
                return False
            self._armed = None
            self.cuts.append(kind)
            self._refusing = self.refuse_after_cut
            return True

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            server = socket.create_connection(self._upstream)
            for sock in (client, server):  # forwarded message by message: no Nagle delay on each
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(client, server)
            threading.Thread(target=self._client_to_server, args=(connection,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(connection,), daemon=True).start()

    def _client_to_server(self, c: _Connection) -> None:
        reader = _Reader(c.client)
        try:
            startup = reader.exact(4)
            c.server.sendall(startup + reader.exact(struct.unpack("!i", startup)[0] - 4))
            while True:
                kind, payload = reader.message()
                if kind == b"P":  # Parse: statement name, SQL
                    name, sql = payload.split(b"\0", 2)[:2]
                    c.statements[name] = sql
                    c.writes |= _WRITE_MARK in sql
                elif kind == b"B":  # Bind: portal name, statement name
                    statement = payload.split(b"\0", 2)[1]
                    c.writes |= _WRITE_MARK in c.statements.get(statement, b"")
                elif kind == b"Q":
                    sql = payload.rstrip(b"\0").strip().upper()
                    c.writes |= _WRITE_MARK in payload
                    if sql.startswith(b"COMMIT") or sql.startswith(b"ROLLBACK"):
                        if sql.startswith(b"COMMIT") and c.writes and self._take("before_commit"):
                            c.close()
                            return
                        c.commit_pending = sql.startswith(b"COMMIT") and c.writes
                        c.writes = False
                c.server.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)
        except (OSError, ConnectionError):
            c.close()

    def _server_to_client(self, c: _Connection) -> None:
        reader = _Reader(c.server)
        try:
            while True:
                kind, payload = reader.message()
                if kind == b"C" and payload.startswith(b"COMMIT") and c.commit_pending:
                    c.commit_pending = False
                    if self._take("after_commit"):
                        c.close()  # the server has committed; its answer never arrives
                        return
                c.client.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)
        except (OSError, ConnectionError):
            c.close()


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def message(self) -> tuple[bytes, bytes]:
        header = self.exact(5)
        length = struct.unpack("!i", header[1:])[0]
        return header[:1], self.exact(length - 4)
