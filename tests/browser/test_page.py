"""The issuer's page as a person uses it, in headless chromium, against the real stack (issuer, resolver and
notifier as processes on the session's Apache Kafka; an unmodified quixstreams app under ``streamtoken run``).

Screenshots go to each test's tmp dir."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import RunningStack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Scenario = Callable[..., dict[str, Any]]
HOSTILE = "<img src=x onerror=window.__pwned=true;alert(1)>"


def _tokens(stack: RunningStack, env_id: str) -> tuple[str, str]:
    body = stack.tokens(env_id)
    return body["token_1"]["token"], body["token_2"]["token"]


def test_hostile_strings_show_as_text(page_stack: RunningStack, scenario: Scenario) -> None:
    env_id = page_stack.create_environment("hostile")
    created = page_stack.issuer.post("/v1/pats", json={"subject": HOSTILE, "role": "member"})
    assert created.status_code == 201, created.text

    result = scenario("hostile", environment_id=env_id, hostile=HOSTILE)

    assert HOSTILE in result["subjects"]
    assert result["injected_images"] == 0
    assert HOSTILE in result["confirm_text"]
    assert result["revoked_state"].startswith("revoked")
    assert result["dialogs"] == [], "an alert fired: markup from the API ran"
    assert not result["window_flag"]
    assert not result["window_flag_end"]
    revoked = [p for p in page_stack.issuer.get("/v1/pats").json()["pats"] if p["subject"] == HOSTILE]
    assert revoked
    assert revoked[0]["revoked_at"] is not None


def test_a_member_sees_the_rotation_disabled_with_the_reason(
    page_stack: RunningStack, scenario: Scenario
) -> None:
    env_id = page_stack.create_environment("member")
    generation = page_stack.issuer.get(f"/v1/environments/{env_id}").json()["generation"]
    member = page_stack.issuer.post("/v1/pats", json={"subject": "bob", "role": "member"}).json()["token"]

    result = scenario("member", environment_id=env_id, member_pat=member)

    assert result["reason_visible"]
    assert "Only users with Admin role can rotate" in result["reason"]
    assert "member" in result["reason"]
    assert result["submit_disabled"]
    assert result["confirm_disabled"]
    assert result["pats_disabled"]
    assert page_stack.issuer.get(f"/v1/environments/{env_id}").json()["generation"] == generation


def test_an_ended_session_sends_the_person_to_log_in(page_stack: RunningStack, scenario: Scenario) -> None:
    env_id = page_stack.create_environment("ended")
    doomed = page_stack.issuer.post("/v1/pats", json={"subject": "temp", "role": "admin"}).json()

    result = scenario(
        "expired", environment_id=env_id, doomed_pat=doomed["token"], doomed_pat_id=doomed["id"]
    )

    assert result["revoke_status"] == 200
    assert "session has ended" in result["notice"]
    assert result["banner_hidden"]
    assert result["reload_url"].endswith("/ui/login?reason=ended")
    assert result["reload_status"] == 200
    assert result["forged_url"].endswith("/ui/login?reason=ended")
    assert "Traceback" not in result["forged_body"]
    assert "Personal access token" in result["forged_body"]


def test_javascript_errors_are_shown_and_logged_and_csrf_less_posts_refused(
    page_stack: RunningStack, scenario: Scenario
) -> None:
    env_id = page_stack.create_environment("errors")
    generation = page_stack.issuer.get(f"/v1/environments/{env_id}").json()["generation"]
    marker = f"page-test-error-{uuid.uuid4().hex[:8]}"

    result = scenario("errors", environment_id=env_id, error_marker=marker)

    assert marker in result["banner"]
    assert result["banner_hidden_after_dismiss"]
    wait_for("the issuer to log the page's error", lambda: marker in page_stack.service_logs(), timeout=10)
    logged = [line for line in page_stack.service_logs().splitlines() if marker in line]
    assert any("ui_client_error" in line for line in logged)
    assert result["csrf_less"]["status"] == 403
    assert result["csrf_less"]["body"]["error"] == "csrf_failed"
    assert page_stack.issuer.get(f"/v1/environments/{env_id}").json()["generation"] == generation
    cookie = result["cookie"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert not result["cookie_visible_to_js"]
    assert result["after_logout_url"].endswith("/ui/login")
