"""The `streamtoken` issuer commands against a real issuer on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from shared.broker import free_port
from shared.kafka import KafkaSettings
from shared.tokens import TOKEN_PATTERN
from tests.integration.issuer.conftest import RunningIssuer

ENV = {"org": "acme", "project": "telemetry", "name": "prod"}
ENV_ID = "acme-telemetry-prod"


def test_manage_environments_and_tokens_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    # `admin pat` reads the issuer's settings: same data dir, so the same development secret, and the same
    # database, where it records the PAT.
    monkeypatch.setenv("STREAMTOKEN_ENV", "test")
    monkeypatch.setenv("STREAMTOKEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STREAMTOKEN_ISSUER_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STREAMTOKEN_ISSUER_URL", issuer.url)
    runner = CliRunner()

    def run(*args: str, pat: str | None = None) -> tuple[int, str, str]:
        env = {"STREAMTOKEN_PAT": pat} if pat else {}
        result = runner.invoke(app, list(args), env=env)
        return result.exit_code, result.stdout, result.stderr

    code, admin_pat, _ = run("admin", "pat", "--subject", "alice", "--role", "admin")
    assert code == 0
    admin_pat = admin_pat.strip()
    code, member_pat, _ = run("admin", "pat", "--subject", "bob", "--role", "member")
    member_pat = member_pat.strip()

    code, out, _ = run(
        "env", "create", "--org", "acme", "--project", "telemetry", "--name", "prod", pat=admin_pat
    )
    assert code == 0, (admin_pat, _)
    assert "created acme-telemetry-prod" in out
    code, _, err = run(
        "env", "create", "--org", "acme", "--project", "telemetry", "--name", "prod", pat=admin_pat
    )
    assert code == 3  # refused by the server (cli/common.py)
    assert "409" in err
    assert "already exists" in err
    code, out, _ = run("env", "list", pat=member_pat)
    assert code == 0
    assert "acme-telemetry-prod" in out

    code, out, _ = run("tokens", "show", "acme-telemetry-prod", pat=member_pat)
    assert code == 0
    assert "generation 1" in out
    assert not TOKEN_PATTERN.search(out)  # shortened unless --reveal
    code, out, _ = run("tokens", "rotate", "acme-telemetry-prod", "--reveal", pat=admin_pat)
    assert code == 0
    assert "generation 2" in out
    assert len(TOKEN_PATTERN.findall(out)) == 2
    code, _, err = run("tokens", "rotate", "acme-telemetry-prod", pat=member_pat)
    assert code == 3
    assert "403" in err
    assert "admin" in err
    for answer in ("n\n", ""):  # declined, and no terminal to ask on: exit 2, nothing revoked
        declined = runner.invoke(
            app, ["tokens", "revoke", "acme-telemetry-prod"], input=answer, env={"STREAMTOKEN_PAT": admin_pat}
        )
        assert declined.exit_code == 2, declined.output
        assert "nothing was done" in declined.stderr
        assert "--yes" in declined.stderr
    declined = runner.invoke(
        app, ["env", "delete", "acme-telemetry-prod"], input="n\n", env={"STREAMTOKEN_PAT": admin_pat}
    )
    assert declined.exit_code == 2, declined.output
    code, out, _ = run("tokens", "revoke", "acme-telemetry-prod", "--yes", pat=admin_pat)
    assert code == 0
    assert "generation 3" in out  # the declined revokes changed nothing
    code, out, _ = run("admin", "republish", pat=admin_pat)
    assert code == 0
    assert "queued 1 environments" in out
    code, out, _ = run("admin", "audit", pat=admin_pat)
    assert "rotate" in out
    assert "revoke" in out
    code, _, _ = run("env", "delete", "acme-telemetry-prod", "--yes", pat=admin_pat)
    assert code == 0
    code, _, err = run("env", "show", "acme-telemetry-prod", pat=admin_pat)
    assert code == 3
    assert "404" in err

    code, _, err = run("env", "list")
    assert code == 2  # usage: no PAT
    assert "STREAMTOKEN_PAT" in err
    code, _, err = run("env", "list", pat="garbage")
    assert code == 3
    assert "401" in err
    code, _, err = run("env", "show", "not/an-id", pat=admin_pat)
    assert code == 2
    code, _, err = run("env", "list", "--issuer-url", f"http://127.0.0.1:{free_port()}", pat=admin_pat)
    assert code == 1
    assert "cannot reach the issuer" in err
    code, _, err = run("admin", "pat", "--subject", "x", "--role", "root")
    assert code == 2  # an Enum choice: typer's usage error
    assert "admin" in err


def test_pats_from_the_command_line_bootstrap_create_list_revoke(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    monkeypatch.setenv("STREAMTOKEN_ENV", "test")
    monkeypatch.setenv("STREAMTOKEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STREAMTOKEN_ISSUER_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STREAMTOKEN_ISSUER_URL", issuer.url)
    runner = CliRunner()

    def run(*args: str, pat: str | None = None) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args), env={"STREAMTOKEN_PAT": pat} if pat else {})
        return result.exit_code, result.stdout, result.stderr

    code, admin, err = run("admin", "bootstrap-pat", "--subject", "root", "--role", "admin")
    assert code == 0, err
    admin = admin.strip()
    code, _, err = run("admin", "bootstrap-pat", "--subject", "x", "--role", "admin", "--ttl-days", "3650")
    assert code == 2
    assert "at most 90 days" in err
    code, out, _ = run("env", "create", "--org", "acme", "--project", "telemetry", "--name", "dev", pat=admin)
    assert code == 0, (out, err)
    code, deploy, err = run(
        "pats",
        "create",
        "--subject",
        "agent",
        "--role",
        "deployment",
        "--environment",
        "acme-telemetry-dev",
        pat=admin,
    )
    assert code == 0, err
    deploy = deploy.strip()
    assert "created PAT" in err
    code, out, _ = run("tokens", "show", "acme-telemetry-dev", "--reveal", pat=deploy)
    assert code == 0
    assert len(TOKEN_PATTERN.findall(out)) == 1  # Token 1 only
    code, out, _ = run("pats", "list", "--all", pat=admin)
    assert code == 0
    assert "agent" in out
    assert "deployment" in out
    assert deploy not in out
    code, out, _ = run("pats", "list", "--all", "--json", pat=admin)
    pat_id = next(p["id"] for p in json.loads(out)["pats"] if p["subject"] == "agent")
    code, out, _ = run("pats", "revoke", pat_id, pat=admin)
    assert code == 0
    assert f"revoked PAT {pat_id}" in out
    code, _, err = run("tokens", "show", "acme-telemetry-dev", pat=deploy)
    assert code == 3
    assert "401" in err
    assert "revoked" in err


def test_rotate_retried_after_a_lost_answer_rotates_once(
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    import httpx

    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    real = httpx.Client.request
    sent: list[tuple[str, str | None, str | None]] = []

    def lose_the_first_rotate_answer(
        self: httpx.Client, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        response = real(self, method, url, **kwargs)  # the issuer did the work ...
        headers = kwargs.get("headers") or {}
        if url.endswith("/rotate"):
            sent.append((method, headers.get("Idempotency-Key"), headers.get("If-Match")))
            if len(sent) == 1:
                raise httpx.ReadTimeout("the answer was lost")  # ... but the CLI never saw it
        return response

    monkeypatch.setattr(httpx.Client, "request", lose_the_first_rotate_answer)
    env = {"STREAMTOKEN_ISSUER_URL": issuer.url, "STREAMTOKEN_PAT": issuer.pat_for("admin")}
    result = CliRunner().invoke(app, ["tokens", "rotate", ENV_ID, "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    assert len(sent) == 2
    assert sent[0] == sent[1]  # one Idempotency-Key, one If-Match for the whole run
    assert sent[0][2] == '"1"'
    assert issuer.admin.get(f"/v1/environments/{ENV_ID}").json()["generation"] == 2  # rotated once

    # A second run read generation 2 first; if someone rotated in between, it does nothing (412).
    monkeypatch.setattr(httpx.Client, "request", real)
    result = CliRunner().invoke(app, ["tokens", "rotate", ENV_ID, "--expected-generation", "1"], env=env)
    assert result.exit_code == 3
    assert "412" in result.stderr
    assert "generation 2" in result.stderr
    assert issuer.admin.get(f"/v1/environments/{ENV_ID}").json()["generation"] == 2
