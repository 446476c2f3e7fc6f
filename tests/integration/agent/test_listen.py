"""``--listen-host`` and ``--advertise-url``: the webhook listener reachable beyond 127.0.0.1, the real
notifier allowing the deployment network by CIDR (no ``*``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from shared.tokens import generate_token
from tests.integration.agent.conftest import RunningAgent, wait_until
from tests.integration.agent.real_services import (
    RealServices,
    RealStack,
    agent_args,
    log_lines,
    real_stack_on_loopback,
)

DEPLOYMENT_NETWORK = {"allowed_webhook_hosts": ("127.0.0.0/8",)}  # as an operator names 10.42.0.0/16


@pytest.fixture(scope="module")
def network_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The module's real services, the notifier allowing the deployment network."""
    with real_stack_on_loopback(tmp_path_factory.mktemp("network"), notifier=DEPLOYMENT_NETWORK) as stack:
        yield stack


@pytest.fixture
def network(network_stack: RealStack) -> RealServices:
    return network_stack.environment()


def subscription_url(real: RealServices, agent: RunningAgent) -> str:
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    (sub,) = real.subscriptions()
    return str(sub["url"])


def test_every_interface_with_an_advertised_url_receives_the_notifiers_webhook_there(
    network: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(
        agent_args(
            network,
            tmp_path,
            "--listen-host",
            "0.0.0.0",
            "--advertise-url",
            "http://127.0.0.2:{port}/hooks/f1",
        )
    )
    wait_until(agent.starts, "the child to start")
    url = urlsplit(subscription_url(network, agent))
    assert (url.hostname, url.path) == ("127.0.0.2", "/hooks/f1")
    assert url.port  # {port}: the port the listener got
    # Another address of the machine reaches the same listener (it listens on every interface).
    live = httpx.get(f"http://127.0.0.3:{url.port}/health/live", timeout=5)
    assert live.json() == {"status": "live"}
    after = network.rotate()  # the real notifier posts to the advertised URL
    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == after["token_1"]["token"]
    wait_until(lambda: network.acknowledged() == [2], "the acknowledgement")


def test_a_listen_host_is_the_only_address_listened_on_and_the_default_advertised_one(
    network: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(network, tmp_path, "--listen-host", "127.0.0.2"))
    wait_until(agent.starts, "the child to start")
    url = urlsplit(subscription_url(network, agent))
    assert (url.hostname, url.path) == ("127.0.0.2", "/webhook")
    assert httpx.get(f"http://127.0.0.2:{url.port}/health/live", timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{url.port}/health/live", timeout=5)


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--listen-host", "0.0.0.0"], "0.0.0.0 listens on every interface: give --advertise-url"),
        (["--listen-host", "::"], "--listen-host :: listens on every interface"),
        (["--advertise-url", "ftp://agent:1/x"], "must start with http:// or https://"),
        (["--advertise-url", "http:///webhook"], "has no host"),
        (["--advertise-url", "http://agent:99999/webhook"], "is not a URL"),
        (["--advertise-url", "http://agent/webhook?x=1"], "must not have a user, password, query or"),
    ],
)
def test_unusable_listen_options_are_one_line_errors(
    start_agent: Callable[..., RunningAgent], more: list[str], message: str
) -> None:
    agent = start_agent(["--token-env", "DEMO_TOKEN", *more], DEMO_TOKEN=generate_token())
    assert agent.wait_exit() == 2
    assert message in agent.stderr()
    assert agent.starts() == []
