"""``python -m services.agent``: the same agent, configured by the environment alone."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.integration.agent.conftest import RunningAgent, wait_until
from tests.integration.agent.stand_ins import IssuerStandIn, NotifierStandIn

MODULE = ("-m", "services.agent")


def test_python_m_services_agent_runs_the_child_from_variables_alone(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(
        [],
        entry=MODULE,
        STREAMTOKEN_ISSUER_URL=issuer_url,
        STREAMTOKEN_PAT="pat-admin",
        STREAMTOKEN_ENVIRONMENT="acme-telemetry-dev",
        STREAMTOKEN_NOTIFIER_URL=notifier_url,
        STREAMTOKEN_RESOLVER_URL="http://127.0.0.1:1/portal",
        STREAMTOKEN_DEPLOYMENT_ID="f1-module",
        STREAMTOKEN_AGENT_SLOT="2",
        STREAMTOKEN_AGENT_LISTEN_HOST="127.0.0.2",
        STREAMTOKEN_AGENT_HEARTBEAT_INTERVAL="0",
    )
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["token"] == issuer.token_2.token  # STREAMTOKEN_AGENT_SLOT=2
    assert first["pat"] is None
    assert first["streamtoken_variables"] == []
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    assert sub.deployment_id == "f1-module"
    assert sub.url.startswith("http://127.0.0.2:")
    assert "--slot 2 without adoption" in agent.stderr()  # the same start-up warnings as streamtoken run
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert notifier.deleted == [sub.id]
    assert "pat-admin" not in agent.stderr()


def test_a_bad_configuration_is_one_line_and_exit_2(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent([], entry=MODULE, STREAMTOKEN_AGENT_TOKEN_ENV="A=B")
    assert agent.wait_exit() == 2
    assert agent.stderr().strip().splitlines()[-1] == (
        "python -m services.agent: error: --token-env 'A=B' is not a variable name (letters, digits and _, "
        "not starting with a digit)"
    )
    agent = start_agent([], entry=MODULE, STREAMTOKEN_AGENT_TOKEN_ENV="DEMO", STREAMTOKEN_AGENT_SLOT="3")
    assert agent.wait_exit() == 2
    assert "slot: Input should be less than or equal to 2" in agent.stderr()
    assert agent.starts() == []
