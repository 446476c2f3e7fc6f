"""HTTP: the native lookup API and the Quix Portal API subset (PORTAL_API.md). Routes only translate.

Every answer is JSON, errors included. A token is checked for its shape and checksum before any lookup,
and only its fingerprint is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from services.resolver.admin import TopicAdmin, TopicAdminError, TopicExists, TopicInfo
from services.resolver.credentials import PublicBroker
from services.resolver.metrics import ResolverMetrics
from services.resolver.models import LibrdkafkaSettings, Topic, Workspace
from services.resolver.replica import SERVING, Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import Match, TokenTable
from services.resolver.usage import UsageTracker
from shared.errors import INVALID_TOKEN_CHALLENGE, ApiError, bearer_streaming_token, error_body
from shared.ids import InvalidIdentifier, hyphen_prefixes, short_name, topic_id
from shared.logs import get_logger
from shared.models.resolver import GenerationAnswer, HeartbeatAnswer, TopicLookup, WhoamiAnswer
from shared.topics import kafka_topic_config
from shared.usage import DEPLOYMENT_ID_PATTERN
from shared.web import error_responses

log = get_logger(__name__)

_TO_QUIX_POLICY = {"delete": "Delete", "compact": "Compact", "compact,delete": "DeleteAndCompact"}
_FROM_CLIENT_POLICY = {
    "delete": "delete",
    "compact": "compact",
    "delete,compact": "compact,delete",
    "compact,delete": "compact,delete",
    "deleteandcompact": "compact,delete",
}
KAFKA_DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
RECENTLY_CREATED_SECONDS = 30.0


class Resolver:
    """What the routes need: the table, its status, the topic admin, settings, what clients are told about
    the broker, metrics and a clock."""

    def __init__(
        self,
        table: TokenTable,
        status: Callable[[], Status],
        admin: TopicAdmin,
        settings: ResolverSettings,
        broker: PublicBroker,
        metrics: ResolverMetrics,
        clock: Callable[[], float] = time.time,
        usage: UsageTracker | None = None,
    ) -> None:
        self.table = table
        self.usage = usage  # None: usage tracking off (STREAMTOKEN_RESOLVER_USAGE_ENABLED=false)
        self.status = status
        self.admin = admin
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.counts = metrics.lookup_counts
        self.clock = clock
        self.refused_log = SampledLog(settings.refused_log_per_minute, 60.0)
        self._create_locks: dict[str, asyncio.Lock] = {}
        # Topics this replica created lately, as asked: until the broker's metadata lists one, a read
        # answers it "Creating" rather than 404 (quixstreams polls right after its create).
        self.recently_created: dict[str, tuple[float, TopicInfo]] = {}

    def created_lately(self, name: str) -> TopicInfo | None:
        now = time.monotonic()
        for topic, (at, _) in list(self.recently_created.items()):
            if now - at > RECENTLY_CREATED_SECONDS:
                del self.recently_created[topic]
        held = self.recently_created.get(name)
        return held[1] if held is not None else None

    def create_lock(self, environment_id: str) -> asyncio.Lock:
        """Serialises topic creation of one environment on this replica (its quota check and create)."""
        lock = self._create_locks.get(environment_id)
        if lock is None:
            lock = self._create_locks[environment_id] = asyncio.Lock()
        return lock

    def authenticate(
        self,
        authorization: str | None,
        address: str | None = None,
        user_agent: str = "",
        source: str = "lookup",
        deployment_id: str | None = None,
    ) -> Match:
        """The table's match for ``Authorization: Bearer <token>``, or an :class:`ApiError` (401/503).
        With an ``address``, the use is counted as usage of the token by that client (``services.resolver
        .usage``)."""
        try:
            token = bearer_streaming_token(authorization)
        except ApiError as exc:
            if exc.code == "invalid_token":
                self.counts["malformed"] += 1
            else:
                self.counts["missing"] += 1
            raise
        if self.status() is Status.LOADING:
            raise ApiError(503, "not_ready", "the resolver is still loading its table; retry shortly")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self.clock()
        match = self.table.lookup_digest(digest, now)
        if match is None:
            self.counts["miss"] += 1
            # Anyone can mint well-formed tokens: log a sample (every refusal is counted in the metric).
            suppressed = self.refused_log.admit(time.monotonic())
            if suppressed is not None:
                log.info("token_refused", fingerprint=digest.hex(), suppressed_before=suppressed)
            raise ApiError(
                401, "invalid_token", "unknown or deactivated streaming token", INVALID_TOKEN_CHALLENGE
            )
        self.counts["hit"] += 1
        usage = self.usage
        if usage is not None and address is not None:
            # UsageTracker.seen, inlined: this runs on every authenticated request.
            key = (match.token_id, address, user_agent, source, deployment_id)
            entry = usage.pending.get(key)
            if entry is None:
                usage.add(key, match, digest, now)
            else:
                entry[0] = now
                entry[1] += 1
        return match


class SampledLog:
    """At most ``per_window`` admitted events a window of ``window_seconds``; :meth:`admit` says how many
    were refused since the last admitted one, or ``None`` for an event not to log."""

    def __init__(self, per_window: int, window_seconds: float) -> None:
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._window_start = -math.inf
        self._admitted = 0
        self._suppressed = 0

    def admit(self, now: float) -> int | None:
        if now - self._window_start >= self.window_seconds:
            self._window_start = now
            self._admitted = 0
        if self._admitted >= self.per_window:
            self._suppressed += 1
            return None
        self._admitted += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _resolver(request: Request) -> Resolver:
    resolver: Resolver = request.app.state.resolver
    return resolver


def _client(request: Request) -> tuple[str, str]:
    """The client a use is counted for: the remote address and the User-Agent."""
    client = request.client
    return (client.host if client is not None else ""), request.headers.get("user-agent", "")


def _source(path: str) -> str:
    if path.startswith("/v1/topics/"):
        return "lookup"
    if path == "/v1/whoami":
        return "whoami"
    return "portal"


def _caller(request: Request) -> Match:
    address, user_agent = _client(request)
    return _resolver(request).authenticate(
        request.headers.get("authorization"), address, user_agent, _source(request.url.path)
    )


Caller = Annotated[Match, Depends(_caller)]
ResolverDep = Annotated[Resolver, Depends(_resolver)]


def _topic_id(resolver: Resolver, environment_id: str, name: str) -> str:
    try:
        full = topic_id(environment_id, name)
    except InvalidIdentifier as exc:
        raise ApiError(400, "invalid_topic_name", str(exc)) from None
    if _under_nested_environment(resolver, environment_id, full):
        raise ApiError(
            403, "forbidden", "that topic id lies under another environment's id; choose another topic name"
        )
    return full


def _under_nested_environment(resolver: Resolver, environment_id: str, topic: str) -> bool:
    """True when ``topic`` also starts with a longer environment id (``a-b-c-…`` seen from ``a-b``): it
    belongs to that environment. The issuer refuses such nested ids; this holds even if one slipped in."""
    return any(
        resolver.table.generation(prefix) is not None
        for prefix in hyphen_prefixes(topic)
        if len(prefix) > len(environment_id)
    )


# What each route may answer besides its 2xx (the fast path of /v1/topics answers the same). Each route
# declares its 2xx body with ``response_model`` and returns the orjson bytes itself (``_json``): FastAPI
# documents the model and neither validates nor re-encodes a returned Response.
TOKEN_ERRORS = error_responses(401, 503)
TOPIC_NAME_ERRORS = error_responses(400, 401, 403, 503)
WORKSPACE_ERRORS = error_responses(401, 403, 503)

_CONFIGURATION_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "null values (or missing keys) take the resolver's defaults",
    "properties": {
        "partitions": {"type": ["integer", "null"], "minimum": 1},
        "replicationFactor": {"type": ["integer", "null"], "description": "advisory; the deployment's"},
        "retentionInMinutes": {
            "type": ["integer", "null"],
            "minimum": -1,
            "description": "-1 (unlimited) only where STREAMTOKEN_RESOLVER_ALLOW_INFINITE_RETENTION is on",
        },
        "retentionInBytes": {"type": ["integer", "null"], "minimum": -1},
        "cleanupPolicy": {
            "type": ["string", "null"],
            "examples": ["delete", "compact", "delete,compact", "DeleteAndCompact"],
        },
    },
}
CREATE_TOPIC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "configuration": _CONFIGURATION_SCHEMA},
                }
            }
        },
    }
}
CREATE_TOPIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the topic existed already: the topic object", "model": Topic},
    **error_responses(400, 401, 403, 413, 503),
}


# --- native API ----------------------------------------------------------------------------------------

native = APIRouter(tags=["lookup"])


@native.get(
    "/v1/topics/{name}",
    summary="Resolve a short topic name to the environment's topic id",
    response_model=TopicLookup,  # documented here; answered by answer_topic_lookup ahead of FastAPI
    responses=TOPIC_NAME_ERRORS,
)
async def resolve_topic(name: str, request: Request) -> Response:
    match = _caller(request)
    full = _topic_id(_resolver(request), match.environment_id, name)
    return _json({"topic_id": full, "environment_id": match.environment_id})


INTERNAL_KEY_HEADER = "X-Streamtoken-Internal-Key"


@native.get(
    "/v1/environments/{environment_id}/generation",
    tags=["propagation"],
    summary="The generation of an environment this resolver's table holds (the issuer's propagation view)",
    response_model=GenerationAnswer,
    responses=error_responses(401),
    description=(
        "For the issuer's propagation view: which generation of the environment's token state this replica "
        "has applied (`null` when it holds none, e.g. unknown or deleted), and whether the replica is "
        "`ready` (caught up, as `/health/ready`). A token of that generation authenticates here once "
        "`generation` has reached it. Reveals no secret and needs no streaming token; when "
        f"`STREAMTOKEN_RESOLVER_INTERNAL_KEY` is set, the `{INTERNAL_KEY_HEADER}` header must carry it "
        "(401 otherwise)."
    ),
)
async def environment_generation(environment_id: str, request: Request, resolver: ResolverDep) -> Response:
    if not _internal_key_ok(resolver, request):
        raise ApiError(401, "unauthorized", f"send the resolver's internal key as {INTERNAL_KEY_HEADER}")
    return _json(
        {
            "environment_id": environment_id,
            "generation": resolver.table.generation(environment_id),
            "ready": resolver.status() in SERVING,
        }
    )


def _internal_key_ok(resolver: Resolver, request: Request) -> bool:
    """The request carries the resolver's internal key, or the resolver has none (then every caller is
    trusted as on the open propagation endpoint; docs/resolver.md)."""
    key = resolver.settings.internal_key
    if key is None:
        return True
    given = request.headers.get(INTERNAL_KEY_HEADER, "")
    return hmac.compare_digest(given.encode("utf-8"), key.get_secret_value().encode("utf-8"))


FORWARDED_FOR_HEADER = "X-Streamtoken-Forwarded-For"
FORWARDED_USER_AGENT_HEADER = "X-Streamtoken-Forwarded-User-Agent"


@native.get(
    "/v1/whoami",
    summary="The environment, slot and token id of the caller's streaming token",
    response_model=WhoamiAnswer,
    responses=TOKEN_ERRORS,
    description=(
        "Counted as usage of the token (source `whoami`, the caller's address and User-Agent). The "
        f"notifier checks its callers' tokens here and sends `{FORWARDED_FOR_HEADER}` and "
        f"`{FORWARDED_USER_AGENT_HEADER}`: with the resolver's internal key (or when the resolver has "
        "none), the use is counted for that client with source `notifier` instead of for the notifier."
    ),
)
async def whoami(request: Request, resolver: ResolverDep) -> Response:
    forwarded = request.headers.get(FORWARDED_FOR_HEADER)
    if forwarded is not None and _internal_key_ok(resolver, request):
        caller = resolver.authenticate(
            request.headers.get("authorization"),
            forwarded,
            request.headers.get(FORWARDED_USER_AGENT_HEADER, ""),
            "notifier",
        )
    else:
        caller = _caller(request)
    return _json(
        {
            "environment_id": caller.environment_id,
            "slot": caller.slot,
            "token_id": caller.token_id,
            "generation": caller.generation,
        }
    )


HEARTBEAT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["deployment_id"],
                    "additionalProperties": False,
                    "properties": {
                        "deployment_id": {
                            "type": "string",
                            "pattern": DEPLOYMENT_ID_PATTERN,
                            "description": "the agent's deployment id (1-100 of A-Z a-z 0-9 . _ : -)",
                        }
                    },
                }
            }
        },
    }
}
_DEPLOYMENT_ID = re.compile(DEPLOYMENT_ID_PATTERN)


@native.post(
    "/v1/heartbeat",
    summary="An agent reports the token its child runs with (usage with the deployment id)",
    response_model=HeartbeatAnswer,
    responses=error_responses(401, 413, 422, 503),
    openapi_extra=HEARTBEAT_BODY,
    description=(
        '`Authorization: Bearer <the token the deployment runs with>`, body `{"deployment_id": ...}`. '
        "Counted as usage of that token (source `heartbeat`, with the deployment id), so the issuer's "
        "readiness view shows which deployments run on Token 1 and which on Token 2. Answers the token's "
        "environment, id and `slot` (1 or 2; `null` for an outgoing Token 1 in its grace period). 401 for "
        "an unknown or rotated-out token, 422 for a bad body."
    ),
)
async def heartbeat(request: Request, resolver: ResolverDep) -> Response:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(422, "invalid_request", "the body must be a JSON object") from None
    deployment_id = body.get("deployment_id") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or set(body) != {"deployment_id"}
        or not isinstance(deployment_id, str)
        or _DEPLOYMENT_ID.fullmatch(deployment_id) is None
    ):
        raise ApiError(
            422,
            "invalid_request",
            'the body must be {"deployment_id": "..."}: 1-100 of A-Z a-z 0-9 . _ : -, nothing else',
        )
    address, user_agent = _client(request)
    match = resolver.authenticate(
        request.headers.get("authorization"), address, user_agent, "heartbeat", deployment_id
    )
    state = resolver.table.environment(match.environment_id)
    grace = state is not None and any(
        t.token_id == match.token_id and t.valid_until is not None for t in state.tokens
    )
    return _json(
        {
            "environment_id": match.environment_id,
            "token_id": match.token_id,
            "slot": None if grace else match.slot,
            "generation": match.generation,
        }
    )


# --- Quix Portal API subset ------------------------------------------------------------------------------

portal = APIRouter(tags=["portal"])


def _own_workspace(caller: Match, workspace: str) -> str:
    if workspace != caller.environment_id:
        raise ApiError(403, "forbidden", "this streaming token does not belong to that workspace")
    return workspace


def _workspace_body(environment_id: str) -> dict[str, Any]:
    return {
        "workspaceId": environment_id,
        "name": environment_id,
        "status": "Ready",
        "brokerType": "SharedKafka",
        "brokerSettings": {"brokerType": "SharedKafka", "syncTopics": False},
    }


@portal.get(
    "/workspaces",
    summary="The caller's environment, as a one-element workspace list",
    response_model=list[Workspace],
    responses=TOKEN_ERRORS,
)
async def workspaces(caller: Caller) -> Response:
    return _json([_workspace_body(caller.environment_id)])


@portal.get(
    "/workspaces/{workspace}",
    summary="The caller's environment as a workspace",
    response_model=Workspace,
    responses=WORKSPACE_ERRORS,
)
async def workspace(workspace: str, caller: Caller) -> Response:
    return _json(_workspace_body(_own_workspace(caller, workspace)))


NO_STORE = {"Cache-Control": "no-store"}


@portal.get(
    "/workspaces/{workspace}/broker/librdkafka",
    summary="The caller's own librdkafka connection settings and broker credentials",
    response_model=LibrdkafkaSettings,
    responses=WORKSPACE_ERRORS,
    description=(
        "A flat librdkafka dict: `bootstrap.servers`, `security.protocol` and, where the broker uses SASL, "
        "`sasl.mechanism` (SCRAM-SHA-256 by default), `sasl.username` (the caller's token id) and "
        "`sasl.password` (derived from the caller's token, `shared.broker_access.broker_password`); where "
        "it uses TLS, `ssl.ca.cert` (the cluster CA, base64 PEM). Never another token's login, never a "
        "shared one. Answered with `Cache-Control: no-store`. When the broker is PLAINTEXT (the Tansu "
        "fallback of `streamtoken dev`), only `bootstrap.servers` and `security.protocol` are answered and "
        "**broker-side enforcement is off**: the broker then checks no token, user or ACL at all."
    ),
)
async def librdkafka(workspace: str, request: Request, caller: Caller, resolver: ResolverDep) -> Response:
    _own_workspace(caller, workspace)
    # The Caller dependency matched this very header; re-reading it gives the token its password derives from.
    token = bearer_streaming_token(request.headers.get("authorization"))
    return _json(resolver.broker.for_token(caller.token_id, token), headers=NO_STORE)


# Kafka's retention.ms and retention.bytes are 64-bit; JSON answers must stay within them too.
_MAX_INT64 = 2**63 - 1
MAX_RETENTION_MINUTES = _MAX_INT64 // 60000


def _minutes(retention_ms: str | None) -> int:
    if retention_ms is None:
        return KAFKA_DEFAULT_RETENTION_MS // 60000
    try:
        value = int(retention_ms)
    except ValueError:
        return KAFKA_DEFAULT_RETENTION_MS // 60000
    return min(value, _MAX_INT64) // 60000 if value >= 0 else -1


def _bytes(retention_bytes: str | None) -> int:
    try:
        value = int(retention_bytes) if retention_bytes is not None else -1
    except ValueError:
        return -1
    return min(value, _MAX_INT64) if value >= 0 else -1


def topic_body(workspace: str, info: TopicInfo) -> dict[str, Any]:
    """The Portal API topic object, describing the topic as the broker has it."""
    policy = info.config.get("cleanup.policy", "delete").replace(" ", "").lower()
    policy = ",".join(sorted(policy.split(",")))
    return {
        "id": info.name,
        "name": short_name(workspace, info.name),
        "workspaceId": workspace,
        "status": "Ready" if info.ready else "Creating",
        "configuration": {
            "partitions": info.partitions,
            "replicationFactor": info.replication_factor,
            "retentionInMinutes": _minutes(info.config.get("retention.ms")),
            "retentionInBytes": _bytes(info.config.get("retention.bytes")),
            "cleanupPolicy": _TO_QUIX_POLICY.get(policy, "Delete"),
        },
    }


async def _describe(resolver: Resolver, workspace: str, name: str) -> dict[str, Any] | None:
    try:
        info = await resolver.admin.topic(name)
    except TopicAdminError as exc:
        raise ApiError(503, "kafka_unavailable", str(exc)) from None
    return None if info is None else topic_body(workspace, info)


@portal.get(
    "/{workspace}/topics/{name}",
    summary="A topic of the workspace (404 if it does not exist)",
    response_model=Topic,
    responses=error_responses(400, 401, 403, 404, 503),
)
async def get_topic(workspace: str, name: str, caller: Caller, resolver: ResolverDep) -> Response:
    _own_workspace(caller, workspace)
    full = _topic_id(resolver, workspace, name)
    body = await _describe(resolver, workspace, full)
    if body is None:
        pending = resolver.created_lately(full)
        if pending is not None:
            return _json(topic_body(workspace, pending))
        raise ApiError(404, "not_found", f"topic {name[:80]!r} does not exist in this workspace")
    return _json(body)


@portal.get(
    "/{workspace}/topics",
    summary="Every topic of the workspace",
    response_model=list[Topic],
    responses=WORKSPACE_ERRORS,
)
async def list_topics(workspace: str, caller: Caller, resolver: ResolverDep) -> Response:
    _own_workspace(caller, workspace)
    try:
        topics = await resolver.admin.topics(f"{workspace}-")
    except TopicAdminError as exc:
        raise ApiError(503, "kafka_unavailable", str(exc)) from None
    return _json(
        [
            topic_body(workspace, info)
            for name, info in sorted(topics.items())
            if not _under_nested_environment(resolver, workspace, name)
        ]
    )


def _int_or_default(config: dict[str, Any], key: str, default: int, low: int, high: int | None = None) -> int:
    value = config.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or int(value) != value
    ):
        raise ApiError(400, "invalid_request", f"configuration.{key} must be an integer")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "invalid_request", f"configuration.{key} must be {bound}")
    return value


def _retention(config: dict[str, Any], key: str, default: int, maximum: int, infinite: bool) -> int:
    """A retention value within ``0..maximum``, or ``-1`` (unlimited) where that is allowed."""
    if config.get(key) == -1 and not isinstance(config.get(key), bool):
        if infinite:
            return -1
        raise ApiError(
            400,
            "invalid_request",
            f"configuration.{key} -1 (unlimited) is not allowed here; give a value between 0 and {maximum}",
        )
    return _int_or_default(config, key, default, 0, maximum)


def _check_quota(resolver: Resolver, workspace: str, held: dict[str, TopicInfo], partitions: int) -> None:
    """403 ``quota_exceeded`` when one more topic of ``partitions`` would take the environment over its
    topic count or partition total; ``held`` is what the broker's metadata says it has now."""
    settings = resolver.settings
    own = [info for name, info in held.items() if not _under_nested_environment(resolver, workspace, name)]
    if len(own) >= settings.max_topics_per_environment:
        resolver.metrics.quota_refusals.labels("topics").inc()
        raise ApiError(
            403,
            "quota_exceeded",
            f"this environment already has {len(own)} topics, the most it may have "
            f"(STREAMTOKEN_RESOLVER_MAX_TOPICS_PER_ENVIRONMENT={settings.max_topics_per_environment})",
        )
    total = sum(info.partitions for info in own)
    if total + partitions > settings.max_partitions_per_environment:
        resolver.metrics.quota_refusals.labels("partitions").inc()
        raise ApiError(
            403,
            "quota_exceeded",
            f"this environment's topics have {total} of {settings.max_partitions_per_environment} "
            f"partitions; {partitions} more would exceed STREAMTOKEN_RESOLVER_MAX_PARTITIONS_PER_ENVIRONMENT",
        )


@portal.post(
    "/{workspace}/topics",
    summary="Create a topic in the workspace (Kafka topic {workspace}-{name})",
    status_code=201,
    response_model=Topic,
    responses=CREATE_TOPIC_RESPONSES,
    openapi_extra=CREATE_TOPIC_BODY,
)
async def create_topic(workspace: str, request: Request, caller: Caller, resolver: ResolverDep) -> Response:
    _own_workspace(caller, workspace)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request", "the body must be a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ApiError(400, "invalid_request", "the body must be a JSON object with a string 'name'")
    config = body.get("configuration")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ApiError(400, "invalid_request", "'configuration' must be an object")
    name: str = body["name"]
    full = _topic_id(resolver, workspace, name)
    settings = resolver.settings
    partitions = _int_or_default(
        config, "partitions", settings.default_partitions, 1, settings.max_partitions
    )
    infinite = settings.allow_infinite_retention
    minutes = _retention(
        config,
        "retentionInMinutes",
        settings.default_retention_minutes,
        settings.max_retention_minutes,
        infinite,
    )
    retention_bytes = _retention(
        config, "retentionInBytes", settings.default_retention_bytes, settings.max_retention_bytes, infinite
    )
    policy_in = config.get("cleanupPolicy")
    policy: str
    if policy_in is None:
        policy = settings.default_cleanup_policy
    elif isinstance(policy_in, str) and policy_in.replace(" ", "").lower() in _FROM_CLIENT_POLICY:
        policy = _FROM_CLIENT_POLICY[policy_in.replace(" ", "").lower()]
    else:
        raise ApiError(400, "invalid_request", "cleanupPolicy must be delete, compact or delete,compact")

    # One create at a time per environment on this replica, so concurrent requests cannot all pass the
    # quota check on the same count (the metadata is re-read after each create).
    async with resolver.create_lock(workspace):
        try:
            held = await resolver.admin.topics(f"{workspace}-")
        except TopicAdminError as exc:
            raise ApiError(503, "kafka_unavailable", str(exc)) from None
        if full in held:
            return _json(topic_body(workspace, held[full]))
        _check_quota(resolver, workspace, held, partitions)
        # The deployment decides replication (the client's replicationFactor is advisory).
        replication = resolver.settings.kafka.replication_factor
        retention_ms = minutes * 60000 if minutes >= 0 else -1
        try:
            await resolver.admin.create(
                full, partitions, replication, kafka_topic_config(policy, retention_ms, retention_bytes)
            )
        except TopicExists:
            existing = await _describe(resolver, workspace, full)
            if existing is not None:
                return _json(existing)
            raise ApiError(
                400, "topic_exists", f"Topic with name similar to '{name}' already exists."
            ) from None
        except TopicAdminError as exc:
            raise ApiError(503, "topic_not_created", f"{exc}; retry shortly") from None
    resolver.metrics.topics_created.inc()
    log.info("topic_created", environment_id=workspace, topic=full, partitions=partitions, cleanup=policy)
    asked = TopicInfo(
        full, partitions, replication, False, kafka_topic_config(policy, retention_ms, retention_bytes)
    )
    resolver.recently_created[full] = (time.monotonic(), asked)
    created = await _describe(resolver, workspace, full)
    if created is None:  # not yet in metadata: describe what was asked, "Creating" until it shows up
        created = topic_body(workspace, asked)
    return _json(created, status=201)


_TOPICS_PREFIX = "/v1/topics/"


def answer_topic_lookup(resolver: Resolver, scope: dict[str, Any]) -> tuple[int, list[Any], bytes] | None:
    """The hot ``GET /v1/topics/{name}`` without the framework's per-request machinery: the same answer
    as the FastAPI route (which stays for OpenAPI and as the reference), or ``None`` for any other
    request. Measured in docs/benchmarks-resolver.md."""
    if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(_TOPICS_PREFIX):
        return None
    name = scope["path"][len(_TOPICS_PREFIX) :]
    if not name or "/" in name:
        return None
    authorization = None
    user_agent = b""
    for key, value in scope["headers"]:
        if key == b"authorization":
            authorization = value.decode("latin-1")
        elif key == b"user-agent":
            user_agent = value
    client = scope.get("client")
    headers = [(b"content-type", b"application/json")]
    try:
        match = resolver.authenticate(
            authorization, client[0] if client else "", user_agent.decode("latin-1"), "lookup"
        )
        environment_id = match.environment_id
        full = _topic_id(resolver, environment_id, name)
        body = orjson.dumps({"topic_id": full, "environment_id": environment_id})
        status = 200
    except ApiError as exc:
        body = orjson.dumps(error_body(exc.code, exc.message))
        status = exc.status
        headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()
        )
    headers.append((b"content-length", str(len(body)).encode()))
    return status, headers, body


class ResolverAPI(FastAPI):
    """FastAPI, with the topic lookup answered before the middleware stack when it can be."""

    resolver: Resolver | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        resolver = self.resolver
        if resolver is not None:
            try:
                answer = answer_topic_lookup(resolver, scope)
            except Exception:
                answer = None  # let the framework answer (and log) whatever went wrong
            if answer is not None:
                status, headers, body = answer
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await super().__call__(scope, receive, send)


def install_routes(app: FastAPI) -> None:
    app.include_router(native)
    app.include_router(portal)


def ready_detail(resolver_status: Callable[[], dict[str, Any]]) -> Callable[[], tuple[bool, dict[str, Any]]]:
    def ready() -> tuple[bool, dict[str, Any]]:
        detail = resolver_status()
        return detail["status"] in SERVING, detail

    return ready
