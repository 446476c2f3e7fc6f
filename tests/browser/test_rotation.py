"""The seeds' rotation in the page, as a person does it, against the real stack: a running quixstreams app
(examples/f1_producer.py, unmodified, under ``streamtoken run``) listed on Token 1, the typed confirmation,
the live progress up to "acknowledged", and the old token refused at the resolver. Needs the usage and
progress views (issue 12).

Screenshots go to the test's tmp dir; ``STREAMTOKEN_UPDATE_SCREENSHOTS=1`` also copies the README's one to
docs/screenshots/."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_page import HOSTILE
from tests.e2e.harness import RunningStack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Scenario = Callable[..., dict[str, Any]]
DOCS_SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"


def _tokens(stack: RunningStack, env_id: str) -> tuple[str, str]:
    body = stack.tokens(env_id)
    return body["token_1"]["token"], body["token_2"]["token"]


def test_log_in_see_the_app_on_token_1_rotate_and_watch_it_acknowledged(
    page_stack: RunningStack, scenario: Scenario
) -> None:
    env_id = page_stack.create_environment("web")
    old_1, old_2 = _tokens(page_stack, env_id)
    wait_for("the resolver to learn the tokens", lambda: page_stack.whoami(old_1) == 200)
    deployment_id = f"page-f1-{uuid.uuid4().hex[:6]}"
    deployment = page_stack.run(deployment_id, ["--environment", env_id], ["--interval", "0.2"])
    wait_for("the app to produce", lambda: any(n > 0 for n in deployment.produced()), timeout=90)

    result = scenario("rotation", environment_id=env_id, expect_client=deployment_id, grace_seconds=0)

    # Before rotating: their app on Token 1, the tokens masked until revealed.
    assert any(deployment_id in line for line in result["token_1_clients"])
    assert "never" not in result["token_1_last_used"]
    assert old_1 not in result["masked_before_reveal"]
    assert "•" in result["masked_before_reveal"]
    assert result["revealed_token_1"] == old_1
    assert result.get("clipboard", old_1) == old_1  # where the browser grants the clipboard
    assert any(deployment_id in line for line in result["rotate_users"])
    assert "deactivated" in result["rotate_steps"][0]
    assert "takes its place" in result["rotate_steps"][1]
    assert "new Token 2" in result["rotate_steps"][2]
    assert result["submit_disabled_before_confirm"]
    assert result["submit_disabled_wrong_confirm"]
    # After: Token 2 took Token 1's place, a new Token 2, and the progress reached "acknowledged".
    assert result["new_token_1"] == old_2
    assert result["new_token_2"] not in (old_1, old_2)
    assert result["new_token_2"].startswith("stk_")
    acknowledged = [line for line in result["progress"] if line.startswith("✓ Deployments acknowledged")]
    assert acknowledged, result["progress"]
    assert result["streaming_still_open"]
    assert result["dialogs"] == []
    assert result["page_errors"] == []
    # The old token is refused at the resolver; the new Token 1 is served.
    wait_for("the old Token 1 to be refused", lambda: page_stack.whoami(old_1) == 401, timeout=30)
    assert page_stack.whoami(old_2) == 200
    shots = {Path(p).name for p in result["screenshots"]}
    assert {"streaming-tokens.png", "rotating-streaming-tokens.png", "rotation-progress.png"} <= shots
    if os.environ.get("STREAMTOKEN_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for path in result["screenshots"]:
            if Path(path).name in {"streaming-tokens.png", "rotation-progress.png"}:
                shutil.copy(path, DOCS_SCREENSHOTS / Path(path).name)
    # The reveal through the page was audited like any other.
    audit = page_stack.issuer.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
    assert {"reveal", "rotate"} <= {e["action"] for e in audit}


def test_a_hostile_user_agent_shows_as_text(page_stack: RunningStack, scenario: Scenario) -> None:
    env_id = page_stack.create_environment("agent")
    created = page_stack.issuer.post("/v1/pats", json={"subject": HOSTILE, "role": "member"})
    assert created.status_code == 201, created.text
    token_1, _ = _tokens(page_stack, env_id)
    wait_for("the resolver to learn the tokens", lambda: page_stack.whoami(token_1) == 200)
    # A client whose user agent is markup: the usage it leaves at the resolver is shown by the page.
    agent = f"{HOSTILE}-{uuid.uuid4().hex[:4]}"
    resolver = page_stack.client("resolver", token_1)
    assert resolver.get("/v1/whoami", headers={"User-Agent": agent}).status_code == 200

    result = scenario("hostile", environment_id=env_id, hostile=HOSTILE, hostile_agent=agent)

    assert agent in result["agents"]
    assert result["injected_in_dialog"] == 0
    assert result["dialogs"] == [], "an alert fired: markup from the API ran"
    assert not result["window_flag_end"]
