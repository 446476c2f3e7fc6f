"""``python -m services.agent``: the same agent, configured by the environment alone."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.integration.agent.conftest import RunningAgent, wait_until
from tests.integration.agent.real_services import RealServices, log_lines

MODULE = ("-m", "services.agent")


def test_python_m_services_agent_runs_the_child_from_variables_alone(
    real: RealServices, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(
        [],
        entry=MODULE,
        STREAMTOKEN_ISSUER_URL=real.issuer_url,
        STREAMTOKEN_PAT=real.pat(),
        STREAMTOKEN_ENVIRONMENT=real.environment_id,
        STREAMTOKEN_NOTIFIER_URL=real.notifier_url,
        STREAMTOKEN_RESOLVER_URL=real.resolver_url,
        STREAMTOKEN_DEPLOYMENT_ID="f1-module",
        STREAMTOKEN_AGENT_SLOT="2",
        STREAMTOKEN_AGENT_HEARTBEAT_INTERVAL="0",
    )
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["token"] == real.tokens()["token_2"]["token"]  # STREAMTOKEN_AGENT_SLOT=2
    assert first["pat"] is None
    assert first["streamtoken_variables"] == []
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    (sub,) = real.subscriptions()
    assert sub["deployment_id"] == "f1-module"
    assert "--slot 2 without adoption" in agent.stderr()  # the same start-up warnings as streamtoken run
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert real.subscriptions() == []


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
