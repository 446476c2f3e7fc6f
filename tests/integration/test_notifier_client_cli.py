"""shared.client's notifier clients and `streamtoken subscriptions ...` against the real notifier (with the
real issuer and resolver, no Kafka: tests/integration/agent/real_services.py), and their exit codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from shared.broker import free_port
from shared.client import ApiCallError, AsyncNotifierClient, NotifierClient
from shared.models.notifier import SubscriptionCreated, SubscriptionWithSecret
from shared.tokens import generate_token
from tests.integration.agent.real_services import start_real_services


def _json_out(stdout: str) -> Any:
    """The JSON a command printed (the in-process services log to the same captured stdout)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("[", "{"))
    closing = "]" if lines[start] == "[" else "}"
    end = len(lines) - 1 - lines[::-1].index(closing)
    return json.loads("\n".join(lines[start : end + 1]))


def test_notifier_client_and_subscriptions_commands(serve_app: Callable[..., str], tmp_path: Path) -> None:
    real = start_real_services(serve_app, tmp_path)
    token = real.tokens()["token_1"]["token"]
    hook = f"http://127.0.0.1:{free_port()}/webhook"

    async def subscribe() -> tuple[SubscriptionCreated | SubscriptionWithSecret, str]:
        async with AsyncNotifierClient(real.notifier_url) as client:
            created = await client.subscribe(token, "f1-producer", hook, "restart")
            assert isinstance(created, SubscriptionCreated)
            again = await client.subscribe(token, "f1-producer", hook, "restart", created.management_key)
            assert isinstance(again, SubscriptionWithSecret)
            assert again.id == created.id
            with pytest.raises(ApiCallError) as refused:
                await client.subscribe(token, "other", "ftp://example.com/x", "restart")
            assert refused.value.status == 422
            assert refused.value.code != "bad_answer"
            with pytest.raises(ApiCallError) as no_key:
                await client.subscribe(token, "f1-producer", hook, "restart")  # registered: key needed
            assert no_key.value.refused
            return created, created.management_key

    created, key = asyncio.run(subscribe())
    real.rotate()  # the relay's part: the notifier records the rotation and its delivery
    token = real.tokens()["token_1"]["token"]  # the old Token 1 is deactivated now

    with NotifierClient(real.notifier_url, bearer=token) as client:
        page = client.subscriptions()
        assert [s.id for s in page.items] == [created.id]
        assert page.next_cursor is None
    runner = CliRunner()
    env = {
        "STREAMTOKEN_NOTIFIER_URL": real.notifier_url,
        "Quix__Sdk__Token": real.tokens()["token_1"]["token"],
    }

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["subscriptions", *args], env={**env, "COLUMNS": "200"})
        return result.exit_code, result.stdout, result.stderr

    code, out, err = run("list", "--json")
    assert code == 0, err
    assert [s["deployment_id"] for s in _json_out(out)] == ["f1-producer"]
    code, out, _ = run("list")
    assert code == 0
    assert "f1-producer" in out
    assert "secret" not in out
    code, out, _ = run("rotations", "--json")
    assert code == 0
    assert [r["generation"] for r in _json_out(out)["rotations"]] == [2]
    code, out, _ = run("deliveries", "--json")
    assert code == 0
    assert _json_out(out)[0]["subscription_id"] == created.id
    assert run("deliveries", "--status", "bogus")[0] == 2  # an Enum choice
    code, _, err = run("list", "--token", generate_token())
    assert code == 3
    assert "401" in err
    code, _, err = run("list", "--notifier-url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "cannot reach the notifier" in err
    code, _, err = run("delete", created.id, "--key", "wrong-key")
    assert code == 3
    assert "403" in err
    code, out, _ = run("delete", created.id, "--key", key)
    assert code == 0
    assert f"deleted {created.id}" in out
