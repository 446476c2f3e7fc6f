"""``--listen-host`` and ``--advertise-url``: the webhook listener reachable beyond 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.agent.conftest import RunningAgent, issuer_args, wait_until
from tests.integration.agent.stand_ins import IssuerStandIn, NotifierStandIn

Stack = tuple[IssuerStandIn, NotifierStandIn, str, str]


def test_every_interface_with_an_advertised_url_receives_the_webhook_there(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(
        issuer_args(
            issuer_url, notifier_url, "--listen-host", "0.0.0.0",
            "--advertise-url", "http://127.0.0.2:{port}/hooks/f1",
        )
    )  # fmt: skip
    wait_until(agent.starts, "the child to start")
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    url = urlsplit(sub.url)
    assert (url.hostname, url.path) == ("127.0.0.2", "/hooks/f1")
    assert url.port  # {port}: the port the listener got
    # Another address of the machine reaches the same listener (it listens on every interface).
    live = httpx.get(f"http://127.0.0.3:{url.port}/health/live", timeout=5)
    assert live.json() == {"status": "live"}
    issuer.rotate()
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == issuer.token_1.token


def test_a_listen_host_is_the_only_address_listened_on_and_the_default_advertised_one(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    _, notifier, issuer_url, notifier_url = stack
    agent = start_agent(issuer_args(issuer_url, notifier_url, "--listen-host", "127.0.0.2"))
    wait_until(agent.starts, "the child to start")
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    url = urlsplit(sub.url)
    assert (url.hostname, url.path) == ("127.0.0.2", "/webhook")
    assert httpx.get(f"http://127.0.0.2:{url.port}/health/live", timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{url.port}/health/live", timeout=5)


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (
            ["--listen-host", "0.0.0.0"],
            "0.0.0.0 listens on every interface: give --advertise-url",
        ),
        (["--listen-host", "::"], "--listen-host :: listens on every interface"),
        (["--advertise-url", "ftp://agent:1/x"], "must start with http:// or https://"),
        (["--advertise-url", "http:///webhook"], "has no host"),
        (["--advertise-url", "http://agent:99999/webhook"], "is not a URL"),
        (
            ["--advertise-url", "http://agent/webhook?x=1"],
            "must not have a user, password, query or",
        ),
    ],
)
def test_unusable_listen_options_are_one_line_errors(
    stack: Stack, start_agent: Callable[..., RunningAgent], more: list[str], message: str
) -> None:
    _, _, issuer_url, notifier_url = stack
    agent = start_agent(issuer_args(issuer_url, notifier_url, *more))
    assert agent.wait_exit() == 2
    assert message in agent.stderr()
    assert agent.starts() == []
