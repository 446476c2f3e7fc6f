"""Who gets told what, and when to try again: the notifier's rules, with no I/O.

Everything here is a plain function of plain data so a unit test can call it directly; the store, the
consumer and the delivery workers (the adapters) call these and do the I/O around them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlsplit

import orjson

from shared.backoff import equal_jitter, exponential
from shared.events import ChangeType, TokenStateChanged
from shared.models.notifier import Action as Action
from shared.models.notifier import DeliveryStatus as DeliveryStatus


class Outcome(StrEnum):
    """What one attempt's answer means."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"


NOTIFYING_CHANGES = {
    ChangeType.ROTATED: "streaming_tokens.rotated",
    ChangeType.REVOKED: "streaming_tokens.revoked",
}


class InvalidWebhookUrl(ValueError):
    """A webhook URL the notifier refuses; the message says why, in one sentence, without echoing it."""


# --- subscriptions and deliveries as the service sees them ------------------------------------------------

MAX_GENERATION = 2**63 - 1  # shared.models.notifier.MAX_GENERATION
TOKEN_ENDED = (
    "the streaming token that created it is no longer valid; acknowledge or re-register with the "
    "management key and a valid token to renew it"
)
DISABLED_BY_API = "disabled through the API"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A deployment subscribed to an environment's rotations (times are Unix seconds).

    ``key_hash`` is the SHA-256 of its management key; ``owner_token_id`` the streaming token (by public
    id) it was made or last renewed with, of ``owner_generation``; ``ended_generation`` the event that no
    longer listed that token (the subscription then gets the deliveries up to it, and no later ones).
    """

    id: str
    environment_id: str
    deployment_id: str
    url: str
    action: Action
    secret: str
    enabled: bool
    disabled_reason: str | None
    last_notified_generation: int
    acked_generation: int
    created_at: float
    updated_at: float
    key_hash: str | None
    owner_token_id: str | None
    owner_generation: int
    ended_generation: int | None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One webhook to one subscription for one event: its body and where its attempts stand."""

    id: str
    event_id: str
    subscription_id: str
    environment_id: str
    generation: int
    rotation_id: str | None
    event_type: str
    action: Action
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    leased_until: float
    awaiting_ack_until: float
    last_status_code: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a new subscription is given: its id, its signing secret and its management key (shown once;
    only its hash is kept)."""

    subscription_id: str
    secret: str
    management_key: str

    def __repr__(self) -> str:  # never print the secret or the key
        return f"Credentials(subscription_id={self.subscription_id!r})"


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_subscription_id() -> str:
    return f"sub_{secrets.token_hex(12)}"


def new_management_key() -> str:
    """The key that proves who created a subscription: shown once, stored only as its SHA-256."""
    return f"mk_{secrets.token_urlsafe(32)}"


def new_credentials() -> Credentials:
    return Credentials(new_subscription_id(), new_secret(), new_management_key())


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class SubscriptionForbidden(Exception):
    """The subscription exists but the caller did not prove its management key."""


class SubscriptionLimitReached(Exception):
    """The environment has as many subscriptions as it may."""


class SubscriptionConflict(Exception):
    """Concurrent registrations of the same deployment kept colliding."""


class GenerationAhead(Exception):
    """An acknowledgement of a generation newer than the environment's current one."""

    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current


def require_key(subscription: Subscription, key: str | None) -> Subscription:
    """The subscription, if ``key`` is its management key; else :class:`SubscriptionForbidden`."""
    if subscription.key_hash is None or not key:
        raise SubscriptionForbidden(subscription.id)
    if not hmac.compare_digest(subscription.key_hash, key_hash(key)):
        raise SubscriptionForbidden(subscription.id)
    return subscription


def require_room(count: int, limit: int) -> None:
    """:class:`SubscriptionLimitReached` when an environment with ``count`` subscriptions may not get
    another (``limit`` 0: no limit)."""
    if limit > 0 and count >= limit:
        raise SubscriptionLimitReached(count)


@dataclass(frozen=True, slots=True)
class Owner:
    """The (valid) streaming token a caller used, by public id, and the generation it belongs to."""

    token_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """What a command changes on a subscription; None leaves a field as it is.

    ``enabled`` also sets ``disabled_reason`` (None when enabling); disabling also forgets
    ``ended_generation``. ``owner`` renews the subscription for that token (and forgets
    ``ended_generation``).
    """

    url: str | None = None
    action: Action | None = None
    enabled: bool | None = None
    disabled_reason: str | None = None
    acked_generation: int | None = None
    owner: Owner | None = None

    @property
    def empty(self) -> bool:
        return self == SubscriptionChange()


def reregistration(url: str, action: Action, owner: Owner | None) -> SubscriptionChange:
    """Registering a deployment again: new url and action, enabled again, renewed for the caller's token."""
    return SubscriptionChange(url=url, action=action, enabled=True, owner=owner)


def patch(
    url: str | None, action: Action | None, enabled: bool | None, owner: Owner | None
) -> SubscriptionChange:
    """A change through the API (PATCH); disabling says so in ``disabled_reason``."""
    reason = DISABLED_BY_API if enabled is False else None
    return SubscriptionChange(url=url, action=action, enabled=enabled, disabled_reason=reason, owner=owner)


def acknowledgement(
    subscription: Subscription, generation: int, current: int, owner: Owner | None
) -> SubscriptionChange:
    """The deployment applied ``generation``: remember it (never going back), renew for the caller's token,
    and enable again a subscription that had ended with its old token.

    ``generation`` may not be newer than ``current`` (the newest consumed, or the caller's token's own):
    :class:`GenerationAhead`.
    """
    current = max(current, owner.generation if owner is not None else 0)
    if generation > current:
        raise GenerationAhead(current)
    acked = generation if generation > subscription.acked_generation else None
    revive = owner is not None and not subscription.enabled and subscription.ended_generation is not None
    return SubscriptionChange(acked_generation=acked, enabled=True if revive else None, owner=owner)


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    NOT_REPLAYABLE = "not_replayable"  # neither dead nor disabled
    SUBSCRIPTION_DISABLED = "subscription_disabled"  # deleted, disabled or ended


def replay_outcome(status: DeliveryStatus, subscription_deliverable: bool) -> ReplayOutcome:
    """Whether a delivery may be queued again: only a dead or disabled one, to a subscription that may
    still receive it."""
    if status not in (DeliveryStatus.DEAD, DeliveryStatus.DISABLED):
        return ReplayOutcome.NOT_REPLAYABLE
    if not subscription_deliverable:
        return ReplayOutcome.SUBSCRIPTION_DISABLED
    return ReplayOutcome.REPLAYED


@dataclass(frozen=True, slots=True)
class SubscriptionTarget:
    """What the fan-out needs to know of one subscription."""

    id: str
    deployment_id: str
    action: Action
    last_notified_generation: int
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    id: str
    subscription_id: str
    action: Action
    body: str


def webhook_event_type(change: ChangeType) -> str | None:
    """The webhook ``type`` for a change, or None when nobody needs to act (``created``)."""
    return NOTIFYING_CHANGES.get(change)


def delivery_id(event_id: str, subscription_id: str) -> str:
    """The ``webhook-id`` of one notification: the same for every attempt, replay and re-consumption."""
    digest = hashlib.sha256(f"{event_id}\x00{subscription_id}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


def webhook_body(event: TokenStateChanged, subscription: SubscriptionTarget, event_type: str) -> str:
    """The JSON body of the webhook: ids, generation and action, never a token or fingerprint."""
    token_ids = {f"token_{t.slot}": t.token_id for t in event.tokens if t.valid_until is None}
    return orjson.dumps(
        {
            "type": event_type,
            "environment_id": event.environment_id,
            "generation": event.generation,
            "rotation_id": event.change.rotation_id,
            "action": subscription.action.value,
            "subscription_id": subscription.id,
            "deployment_id": subscription.deployment_id,
            "token_ids": {"token_1": token_ids.get("token_1"), "token_2": token_ids.get("token_2")},
            "occurred_at": event.change.at.isoformat(),
        }
    ).decode()


def plan_deliveries(
    event: TokenStateChanged, subscriptions: Iterable[SubscriptionTarget]
) -> list[PlannedDelivery]:
    """One delivery per enabled subscription of the event's environment that has not seen this generation.

    The caller passes the subscriptions of ``event.environment_id`` only; a generation not newer than the
    last one notified to a subscription is skipped, which makes replays and reordering harmless.
    """
    event_type = webhook_event_type(event.change.type)
    if event_type is None:
        return []
    return [
        PlannedDelivery(
            id=delivery_id(event.event_id, sub.id),
            subscription_id=sub.id,
            action=sub.action,
            body=webhook_body(event, sub, event_type),
        )
        for sub in subscriptions
        if sub.enabled and sub.last_notified_generation < event.generation
    ]


# --- notices: a scheduled rotation's warning ahead of time -----------------------------------------------

NOTICE_TYPE = "token.rotation_due"  # the webhook ``type`` of a warning: no ``action``, nothing to restart


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning the issuer asks the notifier to send: the rotation of ``generation`` is due at ``due_at``
    (Unix seconds; ``forced_at`` the deadline after which it happens whoever still uses Token 1).
    ``notice_id`` is the issuer's idempotency id: the same id is accepted once."""

    environment_id: str
    notice_id: str
    kind: str
    generation: int
    due_at: float
    forced_at: float | None = None


def notice_event_id(environment_id: str, notice_id: str) -> str:
    """The event id of a notice's deliveries (their ``webhook-id`` follows from it, as for rotations)."""
    digest = hashlib.sha256(f"notice\x00{environment_id}\x00{notice_id}".encode()).hexdigest()[:40]
    return f"ntc_{digest}"


def notice_body(notice: Notice, subscription: SubscriptionTarget, at: float) -> str:
    """The JSON body of a warning webhook: ``type`` ``token.rotation_due`` and no ``action``, so a
    deployment can never mistake it for a rotation; ids and times only."""

    def iso(value: float | None) -> str | None:
        return datetime.fromtimestamp(value, UTC).isoformat() if value is not None else None

    return orjson.dumps(
        {
            "type": NOTICE_TYPE,
            "kind": notice.kind,
            "environment_id": notice.environment_id,
            "generation": notice.generation,
            "due_at": iso(notice.due_at),
            "forced_at": iso(notice.forced_at),
            "notice_id": notice.notice_id,
            "subscription_id": subscription.id,
            "deployment_id": subscription.deployment_id,
            "occurred_at": iso(at),
        }
    ).decode()


def plan_notice(
    notice: Notice, subscriptions: Iterable[SubscriptionTarget], at: float
) -> list[PlannedDelivery]:
    """One delivery per enabled subscription. Its row carries action ``reload``: a warning never holds a
    restart slot nor waits for an acknowledgement (the body has no action at all)."""
    event_id = notice_event_id(notice.environment_id, notice.notice_id)
    return [
        PlannedDelivery(
            id=delivery_id(event_id, sub.id),
            subscription_id=sub.id,
            action=Action.RELOAD,
            body=notice_body(notice, sub, at),
        )
        for sub in subscriptions
        if sub.enabled
    ]


# --- responses and the retry schedule ---------------------------------------------------------------------


def classify_status(status: int) -> Outcome:
    """2xx delivered; 410 means the receiver is gone for good; anything else is worth retrying."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def backoff_seconds(
    attempt: int,
    base: float,
    cap: float,
    random: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """The wait before attempt ``attempt + 1`` after ``attempt`` failed ones (``attempt >= 1``).

    Exponential back-off with "equal jitter": half of ``base * 2**(attempt-1)`` fixed, half random, capped
    at ``cap``. A receiver's ``Retry-After`` wins when it asks for longer (never beyond ``cap``), so a
    receiver that asks us to slow down is obeyed and one that says "now" is not hammered either.
    """
    delay = equal_jitter(exponential(attempt, base, cap), random)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def lease_covers_a_request(now: float, lease_until: float, request_timeout: float) -> bool:
    """Whether a claimed delivery may still be sent: its lease must outlast a whole request.

    A delivery that waited in memory until its lease is (nearly) over is left alone: the lease expiry makes
    it due again for any claimer, and sending it now could overlap with that claimer's attempt.
    """
    return now + request_timeout < lease_until


def after_failure(attempts: int, max_attempts: int) -> DeliveryStatus:
    """The status of a delivery whose ``attempts``-th attempt just failed (retryably)."""
    return DeliveryStatus.DEAD if attempts >= max_attempts else DeliveryStatus.PENDING


# --- staggered restarts -----------------------------------------------------------------------------------


def select_within_restart_limit(
    candidates: Sequence[tuple[str, str, Action]],
    in_flight: dict[str, int],
    limit: int,
) -> list[str]:
    """From due ``(delivery_id, environment_id, action)`` in order, the ids that may be sent now.

    ``reload`` deliveries always go. ``restart`` ones go while their environment has fewer than ``limit``
    restarts in flight (``0`` = no limit); ``in_flight`` counts those already sent and not yet acknowledged.
    """
    counts = dict(in_flight)
    chosen: list[str] = []
    for did, env, action in candidates:
        if action is Action.RESTART and limit > 0:
            if counts.get(env, 0) >= limit:
                continue
            counts[env] = counts.get(env, 0) + 1
        chosen.append(did)
    return chosen


# --- rotation progress ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationProgress:
    generation: int
    rotation_id: str | None
    notified: int
    acknowledged: int
    pending: int
    dead: int


def rotation_progress(
    generation: int,
    rotation_id: str | None,
    deliveries: Iterable[tuple[DeliveryStatus, int]],
) -> RotationProgress:
    """Counts for one rotation from ``(status, acked_generation of its subscription)`` per delivery.

    ``notified`` = delivered; ``acknowledged`` = the deployment reported this generation or a later one
    (whether or not our webhook reached it first); ``pending`` = not yet delivered nor dead;
    ``dead`` = gave up.
    """
    notified = acknowledged = pending = dead = 0
    for status, acked in deliveries:
        if acked >= generation:
            acknowledged += 1
        if status is DeliveryStatus.DELIVERED:
            notified += 1
        elif status is DeliveryStatus.PENDING:
            pending += 1
        elif status is DeliveryStatus.DEAD:
            dead += 1
    return RotationProgress(generation, rotation_id, notified, acknowledged, pending, dead)


# --- webhook URLs -----------------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A host whose last label is a number is an IPv4 address to URL parsers and to getaddrinfo, which also reads
# shorthands (2130706433, 127.1, 0x7f000001, 0, octal 0177.0.0.1) that ipaddress does not: only dotted quads
# are accepted, so what is checked is what gets connected to.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) judged as the IPv4 address it reaches."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public_address(ip: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local, shared, reserved,
    multicast or unspecified."""
    ip = _plain(ip)
    return ip.is_global and not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)


def _network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class WebhookAddressPolicy:
    """Which resolved addresses a webhook connection may go to: public ones, and the networks (IP addresses
    and CIDR entries) the operator listed. Checked at connect time, on every address a name resolves to."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, *entry_lists: Iterable[str]) -> WebhookAddressPolicy:
        """From allow-list entries: the IP and CIDR ones count, names and patterns do not."""
        networks = [_network(entry) for entries in entry_lists for entry in entries]
        return cls(tuple(n for n in networks if n is not None))

    def allows(self, ip: IPAddress) -> bool:
        plain = _plain(ip)
        if any(plain.version == n.version and plain in n for n in self.networks):
            return True
        if ip is not plain and any(ip in n for n in self.networks if n.version == 6):
            return True
        return is_public_address(ip)


def _is_internal(host: str, ip: IPAddress | None) -> bool:
    if ip is not None:
        return not is_public_address(ip)
    return host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".localdomain"))


def _matches(host: str, ip: IPAddress | None, pattern: str) -> bool:
    if pattern.startswith("*.") and ip is None:
        return host.endswith(pattern[1:])
    if "/" in pattern and ip is not None:
        network = _network(pattern)
        return network is not None and ip.version == network.version and ip in network
    pattern_ip = _ip(pattern.strip("[]"))
    if pattern_ip is not None and ip is not None:
        return pattern_ip == ip
    return host == pattern


def validate_webhook_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """The URL, normalised, if the notifier may post to it; else :class:`InvalidWebhookUrl`.

    http or https only, a host, no user or password in it, no fragment, and a host the operator allowed:
    listed exactly, by a ``*.suffix`` pattern, or inside a listed CIDR network. ``*`` allows any *public*
    host; loopback, private, link-local and other internal addresses (and ``localhost``/``*.internal``
    names) must be listed explicitly, so the notifier cannot be aimed at internal services by accident.
    Numeric hosts must be dotted quads (or IPv6 in brackets). This checks the URL only: what a name
    resolves to is checked when connecting (:class:`WebhookAddressPolicy`), and again on every attempt.
    """
    if len(url) > 2000:
        raise InvalidWebhookUrl("the webhook url is longer than 2000 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("the webhook url is not a valid URL") from None
    if parts.scheme not in {"http", "https"}:
        raise InvalidWebhookUrl("the webhook url must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrl("the webhook url must not contain a user name or password")
    if parts.fragment:
        raise InvalidWebhookUrl("the webhook url must not contain a fragment (#...)")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise InvalidWebhookUrl("the webhook url has no host")
    if port == 0:
        raise InvalidWebhookUrl("the webhook url has port 0")
    ip = _ip(host)
    if ip is None and _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        raise InvalidWebhookUrl(
            "the webhook host is a number but not a dotted-quad IPv4 address (write it as a.b.c.d)"
        )
    explicit = [p for p in allowed_hosts if p != "*"]
    if any(_matches(host, ip, p.lower()) for p in explicit):
        return parts.geturl()
    if "*" in allowed_hosts:
        if _is_internal(host, ip):
            raise InvalidWebhookUrl(
                f"the webhook host {host[:100]} is an internal or private address; the operator must list it "
                "in STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS to allow it"
            )
        return parts.geturl()
    raise InvalidWebhookUrl(
        f"the webhook host {host[:100]} is not allowed; allowed hosts are set by "
        "STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS"
    )


# --- rate limits --------------------------------------------------------------------------------------


class WindowLimiter:
    """At most ``limit`` events per key in any ``window`` seconds (a sliding log), for at most
    ``max_keys`` keys (the least recently used forgotten first). ``limit`` 0 means no limit."""

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """0 if an event for ``key`` may happen now (and counts it), else the seconds to wait."""
        if self.limit <= 0:
            return 0.0
        times = [t for t in self._events.get(key, ()) if t > now - self.window]
        if len(times) >= self.limit:
            self._events[key] = times
            self._events.move_to_end(key)
            return max(times[0] + self.window - now, 0.001)
        times.append(now)
        self._events[key] = times
        self._events.move_to_end(key)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        return 0.0
