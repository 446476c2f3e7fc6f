"""The notifier's pure rules: who gets what, when to retry, which URLs are allowed, restart staggering."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.domain import (
    Action,
    DeliveryStatus,
    InvalidWebhookUrl,
    Outcome,
    SubscriptionTarget,
    after_failure,
    backoff_seconds,
    classify_status,
    delivery_id,
    lease_covers_a_request,
    parse_retry_after,
    plan_deliveries,
    rotation_progress,
    select_within_restart_limit,
    validate_webhook_url,
)
from shared.events import Change, ChangeType, TokenRef, TokenStateChanged
from shared.tokens import fingerprint, generate_token

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _event(change: ChangeType = ChangeType.ROTATED, generation: int = 2) -> TokenStateChanged:
    tokens = tuple(
        TokenRef(slot=slot, token_id=f"tid_{slot}{generation}", fingerprint=fingerprint(generate_token()))
        for slot in (1, 2)
    )
    return TokenStateChanged(
        environment_id="acme-tele-prod",
        org="acme",
        project="tele",
        environment="prod",
        generation=generation,
        tokens=tokens,
        change=Change(
            type=change, actor="pat:alice", at=datetime(2026, 1, 1, tzinfo=UTC), rotation_id="rot_1"
        ),
    )


def _sub(
    sid: str, last: int = 0, action: Action = Action.RESTART, enabled: bool = True
) -> SubscriptionTarget:
    return SubscriptionTarget(sid, f"dep-{sid}", action, last, enabled)


def test_a_rotation_plans_one_delivery_per_enabled_subscription_not_yet_at_that_generation() -> None:
    event = _event(generation=3)
    subs = [_sub("a"), _sub("b", last=2, action=Action.RELOAD), _sub("c", last=3), _sub("d", enabled=False)]
    planned = plan_deliveries(event, subs)
    assert [p.subscription_id for p in planned] == ["a", "b"]
    assert [p.action for p in planned] == [Action.RESTART, Action.RELOAD]
    assert planned[0].id == delivery_id(event.event_id, "a")


def test_created_events_notify_nobody_and_revocations_do() -> None:
    assert plan_deliveries(_event(ChangeType.CREATED, generation=1), [_sub("a")]) == []
    (planned,) = plan_deliveries(_event(ChangeType.REVOKED), [_sub("a")])
    assert json.loads(planned.body)["type"] == "streaming_tokens.revoked"


def test_the_body_carries_ids_generation_and_action_but_no_token_or_fingerprint() -> None:
    event = _event(generation=7)
    (planned,) = plan_deliveries(event, [_sub("a", action=Action.RELOAD)])
    body = json.loads(planned.body)
    assert body == {
        "type": "streaming_tokens.rotated",
        "environment_id": "acme-tele-prod",
        "generation": 7,
        "rotation_id": "rot_1",
        "action": "reload",
        "subscription_id": "a",
        "deployment_id": "dep-a",
        "token_ids": {"token_1": "tid_17", "token_2": "tid_27"},
        "occurred_at": "2026-01-01T00:00:00+00:00",
    }
    for token in event.tokens:
        assert token.fingerprint not in planned.body
    assert "stk_" not in planned.body


def test_delivery_ids_are_stable_per_event_and_subscription() -> None:
    assert delivery_id("e1", "s1") == delivery_id("e1", "s1")
    assert len({delivery_id("e1", "s1"), delivery_id("e1", "s2"), delivery_id("e2", "s1")}) == 3
    assert delivery_id("e1", "s1").startswith("msg_")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (410, Outcome.GONE), (404, Outcome.RETRY),
     (429, Outcome.RETRY), (500, Outcome.RETRY), (301, Outcome.RETRY)],
)  # fmt: skip
def test_responses_are_classified(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    low = [backoff_seconds(n, 1.0, 60.0, lambda: 0.0) for n in range(1, 9)]
    high = [backoff_seconds(n, 1.0, 60.0, lambda: 1.0) for n in range(1, 9)]
    assert low == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert high == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff_seconds(1000, 1.0, 60.0, lambda: 1.0) == 60.0


def test_retry_after_is_honoured_when_longer_but_capped() -> None:
    assert backoff_seconds(1, 1.0, 60.0, lambda: 0.0, retry_after=30.0) == 30.0
    assert backoff_seconds(1, 1.0, 60.0, lambda: 0.0, retry_after=3600.0) == 60.0
    assert backoff_seconds(3, 1.0, 60.0, lambda: 1.0, retry_after=0.0) == 4.0


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after((now - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_the_last_failed_attempt_makes_a_delivery_dead() -> None:
    assert after_failure(1, 3) is DeliveryStatus.PENDING
    assert after_failure(3, 3) is DeliveryStatus.DEAD


def test_restarts_are_limited_per_environment_and_reloads_are_not() -> None:
    candidates = [
        ("d1", "env-a", Action.RESTART),
        ("d2", "env-a", Action.RESTART),
        ("d3", "env-a", Action.RELOAD),
        ("d4", "env-b", Action.RESTART),
        ("d5", "env-b", Action.RESTART),
    ]
    assert select_within_restart_limit(candidates, {}, 1) == ["d1", "d3", "d4"]
    assert select_within_restart_limit(candidates, {"env-b": 1}, 1) == ["d1", "d3"]
    assert select_within_restart_limit(candidates, {"env-a": 1}, 2) == ["d1", "d3", "d4", "d5"]
    assert select_within_restart_limit(candidates, {"env-a": 9}, 0) == ["d1", "d2", "d3", "d4", "d5"]


def test_rotation_progress_counts_each_state() -> None:
    progress = rotation_progress(
        5,
        "rot",
        [
            (DeliveryStatus.DELIVERED, 5),
            (DeliveryStatus.DELIVERED, 4),
            (DeliveryStatus.PENDING, 6),
            (DeliveryStatus.PENDING, 0),
            (DeliveryStatus.DEAD, 0),
            (DeliveryStatus.DISABLED, 0),
        ],
    )
    assert (progress.notified, progress.acknowledged, progress.pending, progress.dead) == (2, 2, 2, 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "https://localhost/hook?x=1",
        "http://[::1]:8080/",
    ],
)
def test_loopback_urls_are_allowed_by_the_default_list(url: str) -> None:
    assert validate_webhook_url(url, LOOPBACK) == url


@pytest.mark.parametrize(
    ("url", "allowed", "problem"),
    [
        ("ftp://127.0.0.1/x", LOOPBACK, "http:// or https://"),
        ("javascript:alert(1)", LOOPBACK, "http:// or https://"),
        ("127.0.0.1:8000/x", LOOPBACK, "http:// or https://"),
        ("http://user:pw@127.0.0.1/x", LOOPBACK, "user name or password"),
        ("http://user@127.0.0.1/x", LOOPBACK, "user name or password"),
        ("http:///x", LOOPBACK, "no host"),
        ("http://127.0.0.1/x#frag", LOOPBACK, "fragment"),
        ("http://127.0.0.1:99999/x", LOOPBACK, "not a valid URL"),
        ("https://example.com/x", LOOPBACK, "not allowed"),
        ("http://10.0.0.5/x", ("*",), "internal or private"),
        ("http://169.254.169.254/latest", ("*",), "internal or private"),
        ("http://127.0.0.1/x", ("*",), "internal or private"),
        ("http://metadata.internal/x", ("*",), "internal or private"),
        ("http://localhost/x", ("*",), "internal or private"),
        ("http://evil.example.org/x", ("*.example.com",), "not allowed"),
        ("http://10.1.0.1/x", ("10.0.0.0/16",), "not allowed"),
    ],
)
def test_bad_or_disallowed_urls_are_refused_with_a_reason(
    url: str, allowed: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(InvalidWebhookUrl, match=problem) as caught:
        validate_webhook_url(url, allowed)
    assert "pw@" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x", ("*",)),
        ("https://a.hooks.example.com/x", ("*.example.com",)),
        ("http://10.0.3.4:8080/x", ("10.0.0.0/16",)),
        ("http://agent.internal/x", ("agent.internal",)),
        ("https://93.184.216.34/x", ("*",)),
    ],
)
def test_listed_hosts_networks_and_public_hosts_under_a_star_are_allowed(
    url: str, allowed: tuple[str, ...]
) -> None:
    assert validate_webhook_url(url, allowed) == url


def test_a_claimed_delivery_is_sent_only_while_its_lease_outlasts_a_request() -> None:
    assert lease_covers_a_request(now=100.0, lease_until=130.0, request_timeout=10.0)
    assert not lease_covers_a_request(now=120.0, lease_until=130.0, request_timeout=10.0)
    assert not lease_covers_a_request(now=125.0, lease_until=130.0, request_timeout=10.0)
