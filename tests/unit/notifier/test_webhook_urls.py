"""Finding 5 at the URL: numeric shorthands of addresses are refused; which resolved addresses are fine."""

from __future__ import annotations

import ipaddress

import pytest

from services.notifier.domain import InvalidWebhookUrl, WebhookAddressPolicy, validate_webhook_url


@pytest.mark.parametrize(
    "host",
    ["2130706433", "127.1", "0x7f000001", "0", "0x7f.1", "017700000001", "127.0.0.01", "1.2.3", "10.1"],
)
def test_numeric_shorthands_that_are_not_dotted_quads_are_refused_even_under_star(host: str) -> None:
    # getaddrinfo maps every one of these to an address (2130706433 and 0x7f000001 to 127.0.0.1, 0 to 0.0.0.0)
    for allowed in (("*",), ("*", host), (host,)):
        with pytest.raises(InvalidWebhookUrl, match="dotted"):
            validate_webhook_url(f"http://{host}:8001/v1/admin/republish", allowed)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2375/containers/prune",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8001/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.7/x",
        "http://localhost/x",
        "http://metadata.google.internal/",
    ],
)
def test_internal_addresses_need_an_explicit_entry(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        validate_webhook_url(url, ("*",))


def test_the_deployment_network_can_be_allowed_by_cidr_without_star() -> None:
    assert validate_webhook_url("http://10.1.2.3:8080/hook", ("10.0.0.0/8",)) == "http://10.1.2.3:8080/hook"
    assert validate_webhook_url("https://hooks.example.com/x", ("*",)) == "https://hooks.example.com/x"
    with pytest.raises(InvalidWebhookUrl):
        validate_webhook_url("http://11.1.2.3/hook", ("10.0.0.0/8",))


def test_resolved_addresses_must_be_global_or_in_an_allowed_network() -> None:
    policy = WebhookAddressPolicy.from_entries(("hooks.example.com", "*.svc", "127.0.0.1", "10.0.0.0/8"))
    ip = ipaddress.ip_address
    assert policy.allows(ip("93.184.216.34"))
    assert policy.allows(ip("127.0.0.1"))
    assert policy.allows(ip("10.200.0.1"))
    assert policy.allows(ip("::ffff:10.0.0.1"))  # IPv4-mapped: judged as the IPv4 address
    for refused in (
        "127.0.0.2",
        "0.0.0.0",
        "169.254.169.254",
        "192.168.1.1",
        "::1",
        "fe80::1",
        "::ffff:7f00:2",
        "100.64.0.1",
        "224.0.0.1",
        "fd00::1",
    ):
        assert not policy.allows(ip(refused)), refused
    assert not WebhookAddressPolicy.from_entries(("*",)).allows(ip("127.0.0.1"))
