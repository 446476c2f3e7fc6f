"""Apache Kafka, the broker of record, from Maven jars: fetch, configure, format, start, stop (BROKER.md).

One combined KRaft node on loopback with SASL_SSL + SCRAM on its client listener and the StandardAuthorizer
(no ACL, no access). The jars come from Maven Central through ``shared/kafka_dist/pom.xml`` into a cache
outside the repository (``~/.cache/streamtoken/kafka-<version>``); the configuration is rendered from
``shared/kafka_dist/server.properties.tmpl`` (the same template compose uses). The data directory keeps
the log dirs, the development TLS material and the generated passwords of our own principals, so a restart
keeps the topics, users and ACLs.

Ready means an authenticated admin call answered, not an open port. Missing Java 17+ or Maven is one
sentence saying what to install.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.broker import BrokerError, free_port, port_is_free
from shared.broker_access import (
    ADMIN_USER,
    BROKER_USER,
    SERVICE_USERS,
    Grant,
    service_grants,
)
from shared.kafka import KafkaSettings
from shared.process import die_with_parent
from shared.settings import RuntimeSettings
from shared.tls import BrokerTls, ensure_dev_tls

KAFKA_VERSION = "4.1.1"
DIST_DIR = Path(__file__).with_name("kafka_dist")
POM = DIST_DIR / "pom.xml"
TEMPLATE = DIST_DIR / "server.properties.tmpl"
CONTROLLER_USER = "streamtoken-controller"
CACHE_ENV = "STREAMTOKEN_KAFKA_CACHE"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "streamtoken"
    )
    return Path(root) / f"kafka-{version}"


def java_binary() -> str:
    """The ``java`` to run the broker with (``$JAVA_HOME/bin/java`` or PATH), checked to be 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerError(
            "Apache Kafka needs Java 17 or newer and none was found: install it (apt-get install "
            "openjdk-17-jre-headless) or run the Tansu fallback with --broker embedded."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise BrokerError(
            f"Apache Kafka needs Java 17 or newer, {java} is Java {major or 'of unknown version'}: install "
            "openjdk-17-jre-headless (or set JAVA_HOME) or run the Tansu fallback with --broker embedded."
        )
    return java


def java_available() -> bool:
    try:
        java_binary()
    except BrokerError:
        return False
    return True


def ensure_jars(version: str = KAFKA_VERSION, progress: Any = None) -> Path:
    """The directory holding Kafka's runtime classpath, fetched with Maven the first time."""
    lib = cache_dir(version) / "lib"
    marker = lib / ".complete"
    if marker.is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Apache Kafka {version} is not in {lib} yet and Maven is missing to fetch it: install maven "
            "(apt-get install maven) or run the Tansu fallback with --broker embedded."
        )
    if progress:
        progress(f"fetching Apache Kafka {version} from Maven Central into {lib} (once)")
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {version} ({' / '.join(tail) or 'no output'}); check the "
            "connection to Maven Central and retry."
        )
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    marker.touch()
    return lib


def render_config(
    values: Mapping[str, object], template: Path = TEMPLATE, properties: Mapping[str, str] | None = None
) -> str:
    """The broker's ``server.properties`` from the template; every placeholder must be given.
    ``properties`` are appended after it (in Java's properties files a later key wins)."""
    text = template.read_text()
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"template values missing: {missing}")
    rendered = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    if properties:
        for key, value in properties.items():
            if not re.fullmatch(r"[a-z0-9._-]+", key) or "\n" in value or "\r" in value:
                raise ValueError(f"not a broker property: {key!r}")
        rendered += "\n# given by the launcher (later keys win)\n"
        rendered += "".join(f"{key}={value}\n" for key, value in properties.items())
    return rendered


@dataclass
class BrokerCredentials:
    """Passwords of our own principals (SCRAM users) and of the controller listener, kept 0600."""

    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, path: Path) -> BrokerCredentials:
        if path.is_file():
            data = json.loads(path.read_text())
            creds = cls(dict(data["passwords"]))
        else:
            creds = cls()
        changed = False
        for user in (*SERVICE_USERS, CONTROLLER_USER):
            if user not in creds.passwords:
                creds.passwords[user] = secrets.token_urlsafe(24)
                changed = True
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"passwords": creds.passwords}, handle)
        return creds

    def password(self, user: str) -> str:
        return self.passwords[user]


def _kafka_admin_config(settings: KafkaSettings) -> dict[str, Any]:
    return {**settings.librdkafka(), "socket.timeout.ms": 5000, "log_level": 0}


def acl_binding(grant: Grant) -> Any:
    """The confluent-kafka ``AclBinding`` of a grant."""
    from shared.kafka_acls import AclMapping

    return AclMapping().binding(grant)


def create_grants(settings: KafkaSettings, grants: Iterable[Grant], timeout: float = 15.0) -> None:
    """Create ALLOW bindings (creating an existing one is a no-op) with the given (admin) connection."""
    from confluent_kafka.admin import AdminClient

    bindings = [acl_binding(g) for g in grants]
    if not bindings:
        return
    admin = AdminClient(_kafka_admin_config(settings))
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        future.result(timeout)


def config_values(
    credentials: BrokerCredentials,
    tls: BrokerTls,
    log_dirs: Path | str,
    *,
    port: int,
    controller_port: int,
    host: str = "127.0.0.1",
    listen_host: str | None = None,
    advertised_host: str | None = None,
    reauth_ms: int = 60_000,
    offsets_partitions: int = 5,
    node_id: int = 1,
    voters: dict[int, int] | None = None,
    replication_factor: int = 1,
    min_insync: int = 1,
) -> dict[str, object]:
    """Every value of the template: the local stack and the tests (loopback), compose (``kafka``), and a
    node of a cluster (``voters``: node id → controller port, all on ``host``)."""
    quorum = (
        "controller.quorum.voters=" + ",".join(f"{n}@{host}:{p}" for n, p in sorted(voters.items()))
        if voters
        else f"controller.quorum.bootstrap.servers={host}:{controller_port}"
    )
    return {
        "node_id": node_id,
        "quorum": quorum,
        "replication_factor": replication_factor,
        "min_insync": min_insync,
        "listen_host": listen_host or host,
        "advertised_host": advertised_host or host,
        "port": port,
        "controller_host": host,
        "controller_port": controller_port,
        "controller_user": CONTROLLER_USER,
        "controller_password": credentials.password(CONTROLLER_USER),
        "broker_user": BROKER_USER,
        "broker_password": credentials.password(BROKER_USER),
        "admin_user": ADMIN_USER,
        "reauth_ms": reauth_ms,
        "keystore": tls.keystore,
        "truststore": tls.ca_cert,
        "log_dirs": log_dirs,
        "offsets_partitions": offsets_partitions,
    }


def scram_arguments(credentials: BrokerCredentials) -> list[str]:
    """``--add-scram`` arguments of ``kafka-storage format``: our principals, SHA-256 and SHA-512 each."""
    arguments: list[str] = []
    for user in SERVICE_USERS:
        password = credentials.password(user)
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            arguments += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    return arguments


def render_compose_config(
    out: Path, host: str = "kafka", port: int = 9092, controller_port: int = 9093
) -> Path:
    """What compose's ``kafka`` container runs, rendered from the same template into ``out``:
    ``server.properties``, the development TLS material for ``host``, ``cluster-id``, ``scram-args`` for the
    format step, ``admin.properties`` for health checks, and ``credentials.json`` (0600). Passwords come
    from ``STREAMTOKEN_BROKER_PASSWORD_<USER>`` variables where set (``USER`` upper-cased, ``-`` as
    ``_``), else are generated once."""
    out.mkdir(parents=True, exist_ok=True)
    credentials = BrokerCredentials.load_or_create(out / "credentials.json")
    for user in (*SERVICE_USERS, CONTROLLER_USER):
        given = os.environ.get("STREAMTOKEN_BROKER_PASSWORD_" + user.upper().replace("-", "_"))
        if given:
            credentials.passwords[user] = given
    tls = broker_tls(out / "tls", (host, "localhost", "127.0.0.1"))
    values = config_values(
        credentials, tls, "/var/lib/kafka/data", port=port, controller_port=controller_port,
        host=host, listen_host="0.0.0.0",  # every interface of the container
    )  # fmt: skip
    (out / "server.properties").write_text(render_config(values))
    cluster_id = out / "cluster-id"
    if not cluster_id.is_file():
        cluster_id.write_text(_random_cluster_id())
    (out / "scram-args").write_text(" ".join(scram_arguments(credentials)))
    admin = (
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN_USER}" password="{credentials.password(ADMIN_USER)}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={tls.ca_cert}\n"
    )
    (out / "admin.properties").write_text(admin)
    for secret in ("server.properties", "scram-args", "admin.properties"):
        os.chmod(out / secret, 0o600)
    return out / "server.properties"


class BrokerTlsSettings(BaseSettings):
    """The broker's TLS material outside dev: ``STREAMTOKEN_BROKER_TLS_CA`` (the CA certificate clients trust,
    PEM) and ``STREAMTOKEN_BROKER_TLS_KEYSTORE`` (the broker's private key and certificate chain, PEM)."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_BROKER_TLS_", extra="ignore")

    ca: Path | None = Field(None, description="STREAMTOKEN_BROKER_TLS_CA")
    keystore: Path | None = Field(None, description="STREAMTOKEN_BROKER_TLS_KEYSTORE")


def broker_tls(
    directory: Path, hostnames: tuple[str, ...], runtime: RuntimeSettings | None = None
) -> BrokerTls:
    """The TLS material from settings; in ``dev``/``test`` without settings, a generated development CA.
    Outside dev a missing CA or key store is a one-sentence ``BrokerError``."""
    configured = BrokerTlsSettings()
    if configured.ca is not None and configured.keystore is not None:
        for path in (configured.ca, configured.keystore):
            if not path.is_file():
                raise BrokerError(f"{path} (STREAMTOKEN_BROKER_TLS_*) is not a readable file.")
        return BrokerTls(ca_cert=configured.ca, keystore=configured.keystore)
    if not (runtime or RuntimeSettings()).is_dev:
        raise BrokerError(
            "Outside dev the broker needs its own TLS material: set STREAMTOKEN_BROKER_TLS_CA (CA "
            "certificate) and STREAMTOKEN_BROKER_TLS_KEYSTORE (key + certificate chain, PEM); development "
            "certificates are generated only with STREAMTOKEN_ENV=dev."
        )
    return ensure_dev_tls(directory, hostnames)


class ApacheKafkaBroker:
    """One Apache Kafka node (KRaft, broker + controller) on loopback, SASL_SSL + SCRAM + ACLs."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 9092,
        host: str = "127.0.0.1",
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        offsets_partitions: int = 5,
        reauth_ms: int = 60_000,
        progress: Any = None,
        fast_start: bool | None = None,
        node_id: int = 1,
        voters: dict[int, int] | None = None,
        replication_factor: int = 1,
        credentials: BrokerCredentials | None = None,
        tls: BrokerTls | None = None,
        cluster_id: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.properties = dict(properties or {})
        self.node_id = node_id
        self.voters = voters
        self.replication_factor = replication_factor
        self.cluster_id = cluster_id
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.offsets_partitions = offsets_partitions
        self.reauth_ms = reauth_ms
        # C1 only (-XX:TieredStopAtLevel=1) is ready ~0.5 s sooner, but the broker's TLS (JSSE, Java code)
        # then costs ~10x the CPU: 20 s instead of 2 s of broker CPU to serve 1M records over SASL_SSL, the
        # resolver's cold start 32-49 s instead of 16-20 s (docs/benchmarks-resolver.md). Default: the fast
        # start for the tests (STREAMTOKEN_ENV=test), the full JIT for `streamtoken dev` and everything else.
        self.fast_start = RuntimeSettings().env == "test" if fast_start is None else fast_start
        self._progress = progress
        self._process: subprocess.Popen[bytes] | None = None
        self.credentials = credentials or BrokerCredentials.load_or_create(self.data_dir / "credentials.json")
        self.tls: BrokerTls | None = tls
        self.ready_after_s: float | None = None

    # -- what clients need -----------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def ca_path(self) -> Path:
        return self.tls.ca_cert if self.tls is not None else self.data_dir / "tls" / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def settings_for(self, user: str, **overrides: Any) -> KafkaSettings:
        """Kafka settings of one of our principals (``shared.broker_access``) on this broker."""
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": user,
            "sasl_password": self.credentials.password(user),
            "ssl_ca_location": str(self.ca_path),
        }
        values.update(overrides)
        return KafkaSettings(**values)

    def admin_settings(self, **overrides: Any) -> KafkaSettings:
        return self.settings_for(ADMIN_USER, **overrides)

    def environment_for(self, user: str, **overrides: Any) -> dict[str, str]:
        """``STREAMTOKEN_KAFKA_*`` variables for a service process running as ``user``."""
        return self.settings_for(user, **overrides).environment()

    def grant_services(self, control_topic: str, notifier_group: str = "notifier") -> None:
        """Give our services their least-privilege ACLs for ``control_topic`` (idempotent)."""
        create_grants(self.admin_settings(), service_grants(control_topic, notifier_group))

    # -- lifecycle -------------------------------------------------------------------------------------

    def _config_values(self) -> dict[str, object]:
        assert self.tls is not None
        assert self.controller_port is not None
        return config_values(
            self.credentials,
            self.tls,
            self.data_dir / "logs",
            port=self.port,
            controller_port=self.controller_port,
            host=self.host,
            reauth_ms=self.reauth_ms,
            offsets_partitions=self.offsets_partitions,
            node_id=self.node_id,
            voters=self.voters,
            replication_factor=self.replication_factor,
            min_insync=min(2, self.replication_factor),
        )

    def jit_flags(self) -> list[str]:
        """``fast_start``: C1 only (``-XX:TieredStopAtLevel=1``), else the JVM's full tiered JIT."""
        return ["-XX:TieredStopAtLevel=1"] if self.fast_start else []

    def _say(self, message: str) -> None:
        if self._progress:
            self._progress(message)

    def start(self, timeout: float = 120.0) -> ApacheKafkaBroker:
        started = time.monotonic()
        self.launch()
        self._wait_ready(started + timeout)
        self.ready_after_s = time.monotonic() - started
        return self

    def launch(self) -> None:
        """Format (once) and start the JVM without waiting for it to answer (a cluster starts every node
        before any of them can be ready)."""
        java = java_binary()
        lib = ensure_jars(self.version, self._progress)
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"Port {self.port} on {self.host} is already in use; stop whatever listens there or pick "
                "another port (--port)."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        state_path = self.data_dir / "ports.json"
        if self.controller_port is None and state_path.is_file():
            self.controller_port = int(json.loads(state_path.read_text())["controller_port"])
        if self.voters:
            self.controller_port = self.voters[self.node_id]
        elif self.controller_port is None or not port_is_free(self.host, self.controller_port):
            self.controller_port = free_port(self.host)
        state_path.write_text(json.dumps({"controller_port": self.controller_port}))
        self.tls = self.tls or broker_tls(self.data_dir / "tls", ("localhost", self.host))
        config = self.data_dir / "server.properties"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(render_config(self._config_values(), properties=self.properties))
        classpath = f"{lib}/*"
        if not (self.data_dir / "logs" / "meta.properties").is_file():
            self._format(java, classpath, config)
        log = open(self.log_path, "ab")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [
                    java,
                    f"-Xms{min(256, _megabytes(self.heap))}m",
                    f"-Xmx{self.heap}",
                    "-XX:+UseG1GC",
                    *self.jit_flags(),
                    "-Djava.awt.headless=true",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                    "-Dorg.slf4j.simpleLogger.showDateTime=true",
                    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
                    f"-Xlog:gc:file={self.data_dir / 'gc.log'}:time,uptime:filecount=2,filesize=2m",
                    "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
                    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.raft.QuorumState=info",
                    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.controller.QuorumController=info",
                    "-Dorg.slf4j.simpleLogger.log.kafka.server.BrokerLifecycleManager=info",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a test session or dev stack killed hard takes it along
            )
        except OSError as exc:
            raise BrokerError(f"Could not run {java}: {exc.strerror}.") from None
        finally:
            log.close()

    def _format(self, java: str, classpath: str, config: Path) -> None:
        self._say(f"formatting a new Kafka log directory in {self.data_dir / 'logs'}")
        cluster_id = self.cluster_id or _random_cluster_id()
        command = [
            java,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
            *([] if self.voters else ["--standalone"]),
        ]
        command += scram_arguments(self.credentials)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = [line for line in (result.stdout + result.stderr).splitlines() if "SLF4J" not in line]
            raise BrokerError(f"Formatting the Kafka log directory failed: {' / '.join(lines[-3:])}.")

    def wait_ready(self, timeout: float = 120.0) -> None:
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_kafka_admin_config(self.admin_settings()))
        last = "no answer"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(
                    f"Apache Kafka exited at start with status {code}; its log is {self.log_path}."
                )
            try:
                admin.describe_cluster(request_timeout=2).result(3)
                return
            except Exception as exc:
                last = str(exc)[:200]
                time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"Apache Kafka did not answer an authenticated admin call on {self.bootstrap_servers} in time "
            f"({last}); its log is {self.log_path}."
        )

    def stop(self, timeout: float = 20.0) -> None:
        self.request_stop()
        self.finish_stop(time.monotonic() + timeout)

    def request_stop(self) -> None:
        """SIGTERM: the broker's controlled shutdown begins (:meth:`finish_stop` waits for it)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def finish_stop(self, deadline: float) -> None:
        """Wait for the stop :meth:`request_stop` began until ``deadline`` (monotonic), then SIGKILL."""
        process = self._process
        if process is not None:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def poll(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def __enter__(self) -> ApacheKafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _megabytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([mMgG])", size)
    if not match:
        return 256
    value = int(match.group(1))
    return value * 1024 if match.group(2) in "gG" else value


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what ``random-uuid`` prints)."""
    import base64

    # As Kafka's Uuid.randomUuid: never one starting with "-", which the storage tool reads as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


# KRaft's defaults (fetch timeout 2 s: a quorum leader resigns after 3 s without a majority's fetch; election
# timeout 1 s) assume a quiet machine; on two shared cores with slow fsyncs the two nodes left after a kill
# lost and re-elected the leader again and again. Given to every node of a KafkaCluster (``properties``).
CLUSTER_PROPERTIES: dict[str, str] = {
    "controller.quorum.fetch.timeout.ms": "10000",
    "controller.quorum.election.timeout.ms": "5000",
    "broker.session.timeout.ms": "15000",
}


class KafkaCluster:
    """``size`` Apache Kafka nodes on loopback, each broker + controller, a static controller quorum of all of
    them, topics replicated ``size`` times with ``min.insync.replicas=2`` (issue 10's fault tests). Nodes
    share the passwords and the TLS material; each node can be killed and started again.

    ``properties``: extra broker properties for every node, over ``CLUSTER_PROPERTIES``. ``fast_start``: C1
    only; off by default, since C1 makes the brokers' TLS ~10x as costly (see ``ApacheKafkaBroker``)."""

    def __init__(
        self,
        data_dir: Path,
        size: int = 3,
        heap: str = "384m",
        host: str = "127.0.0.1",
        properties: Mapping[str, str] | None = None,
        fast_start: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.properties = {**CLUSTER_PROPERTIES, **(properties or {})}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.credentials = BrokerCredentials.load_or_create(self.data_dir / "credentials.json")
        self.tls = broker_tls(self.data_dir / "tls", ("localhost", host))
        cluster_id = _random_cluster_id()
        ports = {node: free_port(host) for node in range(1, size + 1)}
        voters = {node: free_port(host) for node in range(1, size + 1)}
        self.nodes = {
            node: ApacheKafkaBroker(
                self.data_dir / f"node-{node}",
                port=ports[node],
                host=host,
                heap=heap,
                node_id=node,
                voters=voters,
                replication_factor=size,
                credentials=self.credentials,
                tls=self.tls,
                cluster_id=cluster_id,
                properties=self.properties,
                fast_start=fast_start,
            )
            for node in ports
        }
        self.version = KAFKA_VERSION

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    @property
    def ca_path(self) -> Path:
        return self.tls.ca_cert

    def start(self, timeout: float = 180.0) -> KafkaCluster:
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready(timeout)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every node at once. One after another, the last ones wait out their controlled shutdown
        with no controller quorum left to answer it (the whole ``timeout``, then SIGKILL)."""
        for node in self.nodes.values():
            node.request_stop()
        deadline = time.monotonic() + timeout
        errors = []
        for node in self.nodes.values():
            try:
                node.finish_stop(deadline)
            except Exception as exc:  # every node is still waited for (or killed)
                errors.append(exc)
        if errors:
            raise errors[0]

    def poll(self) -> int | None:
        """An exit status when every node has ended, else None (the cluster is up while one node is)."""
        codes = [node.poll() for node in self.nodes.values()]
        return None if any(code is None for code in codes) else codes[0]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[node_id].kill()

    def restart(self, node_id: int, timeout: float = 180.0) -> None:
        node = self.nodes[node_id]
        node.stop()
        node.launch()
        node.wait_ready(timeout)

    def settings_for(self, user: str, **overrides: Any) -> KafkaSettings:
        values: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers, "replication_factor": 3}
        values.update(overrides)
        return next(iter(self.nodes.values())).settings_for(user, **values)

    def admin_settings(self, **overrides: Any) -> KafkaSettings:
        return self.settings_for(ADMIN_USER, **overrides)

    def environment_for(self, user: str, **overrides: Any) -> dict[str, str]:
        return self.settings_for(user, **overrides).environment()

    def grant_services(self, control_topic: str, notifier_group: str = "notifier") -> None:
        create_grants(self.admin_settings(), service_grants(control_topic, notifier_group))

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition → the node that leads it now."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(_kafka_admin_config(self.admin_settings())).list_topics(topic, timeout=10)
        return {p.id: p.leader for p in metadata.topics[topic].partitions.values()}

    def controller(self) -> int | None:
        """The node that leads the controller quorum, from the nodes' logs (the newest epoch's leader)."""
        best: tuple[int, int] | None = None
        for node_id, node in self.nodes.items():
            if not node.log_path.is_file():
                continue
            for match in _LEADER.finditer(node.log_path.read_text(errors="replace")):
                epoch = int(match.group(1))
                if best is None or epoch >= best[0]:
                    best = (epoch, node_id)
        return None if best is None else best[1]


_LEADER = re.compile(r"Completed transition to Leader\(.*?epoch=(\d+)")
