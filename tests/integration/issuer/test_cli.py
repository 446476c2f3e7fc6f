"""The `streamtoken` issuer commands against a real issuer on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from shared.broker import free_port
from shared.kafka import KafkaSettings
from shared.logs import TOKEN_PATTERN
from tests.integration.issuer.conftest import RunningIssuer


def test_manage_environments_and_tokens_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    # `admin pat` reads the issuer's settings: same data dir, so the same development secret.
    monkeypatch.setenv("STREAMTOKEN_ENV", "test")
    monkeypatch.setenv("STREAMTOKEN_DATA_DIR", str(tmp_path / "data"))
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
    assert code == 0
    assert "created acme-telemetry-prod" in out
    code, _, err = run(
        "env", "create", "--org", "acme", "--project", "telemetry", "--name", "prod", pat=admin_pat
    )
    assert code == 1
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
    assert code == 1
    assert "403" in err
    assert "admin" in err
    code, out, _ = run("tokens", "revoke", "acme-telemetry-prod", "--yes", pat=admin_pat)
    assert code == 0
    assert "generation 3" in out
    code, out, _ = run("admin", "republish", pat=admin_pat)
    assert code == 0
    assert "queued 1 environments" in out
    code, out, _ = run("admin", "audit", pat=admin_pat)
    assert "rotate" in out
    assert "revoke" in out
    code, _, _ = run("env", "delete", "acme-telemetry-prod", "--yes", pat=admin_pat)
    assert code == 0
    code, _, err = run("env", "show", "acme-telemetry-prod", pat=admin_pat)
    assert code == 1
    assert "404" in err

    code, _, err = run("env", "list")
    assert code == 1
    assert "STREAMTOKEN_PAT" in err
    code, _, err = run("env", "list", pat="garbage")
    assert code == 1
    assert "401" in err
    code, _, err = run("env", "list", "--issuer-url", f"http://127.0.0.1:{free_port()}", pat=admin_pat)
    assert code == 1
    assert "cannot reach the issuer" in err
    code, _, err = run("admin", "pat", "--subject", "x", "--role", "root")
    assert code == 1
    assert "admin" in err
