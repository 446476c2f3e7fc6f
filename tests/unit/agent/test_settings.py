"""``AgentSettings`` (options and variables, checked once) and ``build_agent``'s typed overrides."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from services.agent.adapters.resolver import ResolverClient
from services.agent.adapters.tokens import VariableTokenSource
from services.agent.bootstrap import build_agent, build_source
from services.agent.domain import AdoptWindow
from services.agent.settings import AgentSettings, settings_error
from shared.tokens import generate_token


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAMTOKEN_") and name not in ("STREAMTOKEN_ENV", "STREAMTOKEN_DATA_DIR"):
            monkeypatch.delenv(name)


def refused(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        AgentSettings(command=["app"], **values)  # type: ignore[arg-type]
    return settings_error(caught.value)


def test_variables_configure_it_with_the_shared_names_and_the_agent_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMTOKEN_ENVIRONMENT", "acme-telemetry-prod")
    monkeypatch.setenv("STREAMTOKEN_PAT", "pat-123")
    monkeypatch.setenv("STREAMTOKEN_RESOLVER_URL", "https://resolver.example.com")
    monkeypatch.setenv("STREAMTOKEN_AGENT_SLOT", "2")
    monkeypatch.setenv("STREAMTOKEN_AGENT_ADOPT_WINDOW", "22:00-02:00")
    monkeypatch.setenv("STREAMTOKEN_AGENT_ADOPT_AFTER", "15m")
    monkeypatch.setenv("STREAMTOKEN_AGENT_LISTEN_HOST", "0.0.0.0")
    monkeypatch.setenv("STREAMTOKEN_AGENT_ADVERTISE_URL", "http://10.42.3.4:{port}")
    monkeypatch.setenv("STREAMTOKEN_LOG_LEVEL", "DEBUG")
    settings = AgentSettings(command=["app"])
    assert settings.portal_url == "https://resolver.example.com"
    assert settings.adopt == "restart"  # a window given: the loop closes inside it
    policy = settings.policy()
    assert (policy.adopt, policy.adopt_after, policy.heartbeat_interval) == ("restart", 900.0, 30.0)
    assert policy.adopt_window == AdoptWindow(datetime(1, 1, 1, 22).time(), datetime(1, 1, 1, 2).time())
    assert settings.runtime.log_level == "DEBUG"  # nested, as in the other services
    assert "pat-123" not in repr(settings)
    assert settings.log_warnings() == []


def test_defaults() -> None:
    settings = AgentSettings(command=["app"], token_env="DEMO")
    assert (settings.chosen_action, settings.reload_signum, settings.adopt) == (
        "restart",
        signal.SIGHUP,
        "off",
    )
    assert settings.deployment_id  # HOSTNAME-PID
    with_file = AgentSettings(
        command=["app"], environment="acme-telemetry-dev", pat="p", slot=2, token_file_out=Path("/tmp/t")
    )
    assert (with_file.adopt, with_file.reload_signum) == ("reload", None)
    plain_slot_2 = AgentSettings(command=["app"], environment="acme-telemetry-dev", pat="p", slot=2)
    assert plain_slot_2.adopt == "off"
    assert "--slot 2 without adoption" in plain_slot_2.log_warnings()[0]
    said_off = AgentSettings(command=["app"], environment="acme-telemetry-dev", pat="p", slot=2, adopt="off")
    assert said_off.log_warnings() == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give exactly one token source"),
        ({"token_env": "A", "token_file": "/f"}, "give exactly one token source"),
        ({"environment": "acme-telemetry-dev"}, "--environment needs a PAT"),
        ({"environment": "Not An Id", "pat": "p"}, "environment id"),
        ({"token_env": "A=B"}, "--token-env 'A=B' is not a variable name"),
        ({"token_env": "A", "restart": "sometimes"}, "--restart must be always, on-failure or never"),
        ({"token_env": "A", "reload_signal": "SIGNOPE"}, "--reload-signal 'SIGNOPE' is not a signal name"),
        ({"token_env": "A", "portal_url": "http://resolver:8002"}, "in clear text to resolver"),
        ({"token_env": "A", "listen_host": "0.0.0.0"}, "listens on every interface: give --advertise-url"),
        ({"token_env": "A", "advertise_url": "ftp://x/"}, "must start with http:// or https://"),
        ({"token_env": "A", "adopt": "restart"}, "it needs --environment with --slot 2"),
        ({"environment": "acme-telemetry-dev", "pat": "p", "slot": 2, "adopt": "reload"}, "--token-file-out"),
        ({"token_env": "A", "adopt_window": "2-4"}, "is not a window HH:MM-HH:MM"),
        ({"token_env": "A", "adopt_after": "soon"}, "is not a duration"),
        ({"token_env": "A", "slot": 3}, "slot: Input should be less than or equal to 2"),
    ],
)
def test_unusable_configurations_are_one_sentence(values: dict[str, object], message: str) -> None:
    assert message in refused(**values)


def test_no_command_and_the_pat_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no command given"):
        AgentSettings(token_env="A")
    pat_file = tmp_path / "pat"
    pat_file.write_text("pat-from-file\n")
    settings = AgentSettings(
        command=["app"], environment="acme-telemetry-dev", pat="other", pat_file=pat_file
    )
    assert settings.pat is not None
    assert settings.pat.get_secret_value() == "pat-from-file"  # the file wins
    assert "cannot read the PAT file" in refused(environment="acme-telemetry-dev", pat_file=tmp_path / "none")


def test_insecure_http_turns_the_refusal_into_warnings() -> None:
    settings = AgentSettings(
        command=["app"], token_env="A", portal_url="http://resolver:8002", insecure_http=True
    )
    (warning,) = settings.cleartext_warnings()
    assert warning.startswith("streamtoken run: warning: --portal-url http://resolver:8002")


async def test_build_agent_takes_typed_overrides() -> None:
    token = generate_token()
    settings = AgentSettings(command=["app"], token_env="DEMO", subscribe=False, portal_url="https://r:1")
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"environment_id": "e", "token_id": "t", "slot": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        resolver = ResolverClient("http://resolver.test", http)
        clock = lambda: datetime(2026, 12, 2, 3, tzinfo=UTC)  # noqa: E731
        agent = build_agent(settings, resolver=resolver, http=http, clock=clock, environ={"DEMO": token})
        assert agent.clock is clock
        assert agent.environ == {"DEMO": token}
        assert agent._notifier is None  # no subscription: no notifier, no listener
        answered = await agent._resolver.heartbeat(await agent.source.fetch(), "d")
        assert answered.slot == 1
        assert seen == ["http://resolver.test/v1/heartbeat"]
    source = build_source(settings, environ={"DEMO": token})
    assert isinstance(source, VariableTokenSource)
