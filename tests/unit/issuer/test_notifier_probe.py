"""The issuer's notifier calls (shared.client with the internal key): what they send, what they return,
and every failure as a one-line :class:`NotifierUnavailable` without the key."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from services.issuer.adapters.notifier import INTERNAL_KEY_HEADER, HttpNotifierProbe
from services.issuer.usage import NotifierUnavailable

URL = "http://notifier.internal:8003"
ENV = "acme-telemetry-prod"
ROTATIONS = {
    "environment_id": ENV,
    "subscriptions": 2,
    "rotations": [
        {"generation": 3, "rotation_id": "r3", "notified": 2, "acknowledged": 1, "pending": 0, "dead": 0}
    ],
}
NOTICE = {
    "kind": "rotation_due",
    "generation": 3,
    "due_at": "2026-12-09T12:00:00+00:00",
    "forced_at": None,
    "notice_id": "rotation-due-g3",
}
ACCEPTED = {
    "environment_id": ENV,
    "notice_id": "rotation-due-g3",
    "generation": 3,
    "queued": 2,
    "created": True,
}


def probe(
    handler: Callable[[httpx.Request], httpx.Response], key: str | None = "s3cret"
) -> HttpNotifierProbe:
    return HttpNotifierProbe(URL, internal_key=key, timeout_s=1, transport=httpx.MockTransport(handler))


def test_rotations_and_warn_send_the_internal_key_and_no_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=ROTATIONS)
        return httpx.Response(202, json=ACCEPTED)

    notifier = probe(handler)
    try:
        assert notifier.rotations(ENV) == ROTATIONS
        assert notifier.warn(ENV, NOTICE) == 2
    finally:
        notifier.close()
    get, post = seen
    assert str(get.url) == f"{URL}/v1/environments/{ENV}/rotations?limit=10"
    assert str(post.url) == f"{URL}/v1/environments/{ENV}/notices"
    sent = json.loads(post.content)
    assert sent["notice_id"] == "rotation-due-g3"
    assert sent["forced_at"] is None
    for request in seen:
        assert request.headers[INTERNAL_KEY_HEADER] == "s3cret"
        assert "authorization" not in request.headers


def ok(request: httpx.Request) -> int:
    return 200 if request.method == "GET" else 202


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def slow(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (lambda r: httpx.Response(401, json={"error": "unauthorized", "message": "wrong key"}), "401: "),
        (lambda r: httpx.Response(403, json={"error": "forbidden", "message": "no key"}), "403: "),
        (lambda r: httpx.Response(503, json={}), "HTTP 503 from the notifier"),
        (lambda r: httpx.Response(ok(r), text="<html>"), "unexpected answer from the notifier"),
        (lambda r: httpx.Response(ok(r), json={"subscriptions": "x"}), "unexpected answer from the notifier"),
        (refuse, "the notifier is unreachable (ConnectError)"),
        (slow, "the notifier timed out (ReadTimeout)"),
    ],
)
def test_every_failure_is_one_line_without_the_key(
    respond: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return respond(request)

    notifier = probe(handler)
    try:
        for call in (lambda: notifier.rotations(ENV), lambda: notifier.warn(ENV, NOTICE)):
            with pytest.raises(NotifierUnavailable) as caught:
                call()
            assert str(caught.value).startswith(reason), str(caught.value)
            assert "s3cret" not in str(caught.value)
    finally:
        notifier.close()
    assert calls == ["GET", "POST"]  # sent once each: the scheduler asks again on its next pass


def test_a_notice_the_notifier_would_refuse_is_not_sent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("sent")

    notifier = probe(handler, key=None)
    try:
        with pytest.raises(NotifierUnavailable, match="not a notice"):
            notifier.warn(ENV, {**NOTICE, "notice_id": "has spaces"})
    finally:
        notifier.close()
