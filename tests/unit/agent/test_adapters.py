"""The agent's adapters without network: token sources (httpx.MockTransport), child env, token file."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import httpx
import pytest

from services.agent.adapters.child import child_environment, write_atomically
from services.agent.adapters.http import cleartext_host
from services.agent.adapters.issuer import IssuerClient, IssuerError
from services.agent.adapters.listener import _event_from
from services.agent.adapters.notifier import NotifierClient, NotifierError
from services.agent.adapters.tokens import (
    FileTokenSource,
    IssuerTokenSource,
    TokenUnavailable,
    VariableTokenSource,
)
from services.agent.domain import Credential, WebhookReceived
from shared.process import die_with_parent
from shared.tokens import generate_token

TOKEN_1, TOKEN_2 = generate_token(), generate_token()
BODY = {
    "environment_id": "acme-telemetry-dev",
    "generation": 4,
    "token_1": {"token_id": "tid_1", "token": TOKEN_1, "fingerprint": "f1", "created_at": "x"},
    "token_2": {"token_id": "tid_2", "token": TOKEN_2, "fingerprint": "f2", "created_at": "x"},
}


def issuer(status: int, body: object = None, slot: int = 1) -> IssuerTokenSource:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer pat-123"
        assert request.url.path == "/v1/environments/acme-telemetry-dev/streaming-tokens"
        # A deployment PAT answers Token 2 only when asked for it (the zero-downtime strategy's slot).
        assert request.url.params.get("slot") == ("2" if slot == 2 else None)
        return httpx.Response(status, json=body if body is not None else {"error": "x", "message": "x"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return IssuerTokenSource("http://issuer/", "pat-123", "acme-telemetry-dev", slot, client=client)


@pytest.mark.parametrize("slot", [1, 2])
async def test_issuer_source_returns_the_token_of_its_slot(slot: int) -> None:
    credential = await issuer(200, BODY, slot).fetch()
    assert credential == Credential(
        TOKEN_1 if slot == 1 else TOKEN_2, f"tid_{slot}", 4, "acme-telemetry-dev", slot
    )


@pytest.mark.parametrize(
    ("status", "permanent", "words"),
    [
        (401, True, "refused the PAT"),
        (403, True, "may not read"),
        (404, True, "does not exist"),
        (503, False, "failed to answer"),
    ],
)
async def test_issuer_errors_are_one_clear_sentence(status: int, permanent: bool, words: str) -> None:
    with pytest.raises(TokenUnavailable) as caught:
        await issuer(status).fetch()
    assert caught.value.permanent is permanent
    assert words in caught.value.message


async def test_unreachable_issuer_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    source = IssuerTokenSource("http://issuer", "p", "acme-telemetry-dev", client=client)
    with pytest.raises(TokenUnavailable) as caught:
        await source.fetch()
    assert not caught.value.permanent
    assert caught.value.message == "issuer unreachable at http://issuer (ConnectError)"


async def test_malformed_issuer_answer_never_echoes_the_token() -> None:
    with pytest.raises(TokenUnavailable) as caught:
        await issuer(200, {"generation": 1, "token_1": {"token": "stk_not_a_token"}}).fetch()
    assert "stk_" not in caught.value.message.replace("(stk_...)", "")


async def test_variable_and_file_sources(tmp_path: Path) -> None:
    assert (await VariableTokenSource("T", {"T": TOKEN_1}).fetch()).token == TOKEN_1
    with pytest.raises(TokenUnavailable, match="is not set"):
        await VariableTokenSource("T", {}).fetch()
    path = tmp_path / "token"
    path.write_text(TOKEN_2 + "\n")
    source = FileTokenSource(path)
    assert (await source.fetch()).token == TOKEN_2
    path.write_text(TOKEN_1)
    assert (await source.fetch()).token == TOKEN_1  # read again every time
    path.write_text("garbage")
    with pytest.raises(TokenUnavailable, match="well-formed"):
        await source.fetch()


def test_child_environment_injects_the_token_and_hides_the_pat() -> None:
    base = {"PATH": "/bin", "STREAMTOKEN_PAT": "secret-pat", "Quix__Sdk__Token": "stale"}
    env = child_environment(base, TOKEN_1, "http://resolver", None)
    assert env["Quix__Sdk__Token"] == TOKEN_1
    assert env["Quix__Portal__Api"] == "http://resolver"
    assert "STREAMTOKEN_PAT" not in env
    custom = child_environment(base, TOKEN_2, "http://resolver", "MY_TOKEN")
    assert custom["MY_TOKEN"] == TOKEN_2
    assert "Quix__Sdk__Token" not in custom


def test_child_environment_drops_every_streamtoken_variable_and_the_token_source() -> None:
    base = {
        "PATH": "/bin",
        "HOME": "/home/app",
        "STREAMTOKEN_PAT": "secret-pat",
        "STREAMTOKEN_PAT_FILE": "/run/pat",
        "STREAMTOKEN_ISSUER_JWT_SECRET": "jwt",
        "STREAMTOKEN_ISSUER_ENCRYPTION_KEY": "key",
        "STREAMTOKEN_KAFKA_SASL_PASSWORD": "kafka",
        "STREAMTOKEN_LOG_JSON": "true",
        "DEPLOY_TOKEN": TOKEN_2,  # --token-env DEPLOY_TOKEN
        "streamtoken_lowercase": "kept",  # only the upper-case prefix is ours
    }
    env = child_environment(base, TOKEN_1, "http://resolver", None, "DEPLOY_TOKEN")
    assert not [k for k in env if k.startswith("STREAMTOKEN_")]
    assert "DEPLOY_TOKEN" not in env  # one place for the token: the one the agent keeps current
    assert env == {
        "PATH": "/bin",
        "HOME": "/home/app",
        "streamtoken_lowercase": "kept",
        "Quix__Sdk__Token": TOKEN_1,
        "Quix__Portal__Api": "http://resolver",
    }
    same = child_environment(base, TOKEN_1, "http://resolver", "DEPLOY_TOKEN", "DEPLOY_TOKEN")
    assert same["DEPLOY_TOKEN"] == TOKEN_1  # injected under the source's own name: the agent's value


def test_die_with_parent_is_a_preexec_function_on_linux() -> None:
    hook = die_with_parent()
    if sys.platform.startswith("linux"):
        assert callable(hook)
    else:
        assert hook is None


def test_token_file_is_replaced_atomically_and_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "token"
    write_atomically(path, "one\n")
    write_atomically(path, "two\n")
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temporary file left


def test_webhook_payloads() -> None:
    body = {"type": "streaming_tokens.rotated", "environment_id": "e", "generation": 2, "action": "reload"}
    assert _event_from("m1", body, "e") == WebhookReceived("m1", "streaming_tokens.rotated", "reload", 2)
    assert _event_from("m1", {**body, "type": "something.else"}, "e") is None
    assert _event_from("m1", body, "other") == "the webhook is for another environment"
    assert isinstance(_event_from("m1", {**body, "generation": "2"}, "e"), str)
    assert isinstance(_event_from("m1", {**body, "action": "explode"}, "e"), str)
    assert isinstance(_event_from("m1", [1], "e"), str)


async def test_notifier_errors_carry_status_and_the_notifiers_message() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": "invalid_url", "message": "host 10.0.0.5 is not allowed"})

    notifier = NotifierClient("http://notifier", httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    with pytest.raises(NotifierError) as caught:
        await notifier.subscribe(Credential(TOKEN_1), "d1", "http://10.0.0.5/webhook", "restart")
    assert caught.value.status == 422
    assert caught.value.detail == "host 10.0.0.5 is not allowed"
    assert caught.value.refused
    assert str(caught.value) == (
        "the notifier at http://notifier refused to subscribe (422): host 10.0.0.5 is not allowed"
    )
    assert not NotifierError("x", 503).refused
    assert not NotifierError("x", 429).refused
    assert not NotifierError("unreachable").refused


async def test_issuer_client_creates_or_reads_back_and_reports_errors_with_the_message() -> None:
    created: dict[str, dict[str, object]] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] != "Bearer pat-123":
            return httpx.Response(401, json={"error": "unauthorized", "message": "invalid PAT"})
        if request.method == "POST":
            if "acme-telemetry-dev" in created:
                return httpx.Response(409, json={"error": "conflict", "message": "exists"})
            created["acme-telemetry-dev"] = {"id": "acme-telemetry-dev", "generation": 1}
            return httpx.Response(201, json=created["acme-telemetry-dev"])
        return httpx.Response(200, json=created["acme-telemetry-dev"])

    transport = httpx.MockTransport(answer)
    issuer = IssuerClient("http://issuer/", "pat-123", httpx.AsyncClient(transport=transport))
    assert (await issuer.ensure_environment("acme", "telemetry", "dev"))["id"] == "acme-telemetry-dev"
    assert (await issuer.ensure_environment("acme", "telemetry", "dev"))["id"] == "acme-telemetry-dev"
    wrong = IssuerClient("http://issuer", "nope", httpx.AsyncClient(transport=transport))
    with pytest.raises(IssuerError) as caught:
        await wrong.streaming_tokens("acme-telemetry-dev")
    assert caught.value.status == 401
    assert (
        caught.value.message
        == "reading the tokens of acme-telemetry-dev: the issuer answered 401: invalid PAT"
    )


# --- a deployment-scoped PAT (finding 2) and cleartext URLs (finding 15) ----------------------------------

DEPLOYMENT_BODY = {  # what a PAT that may read only the current token gets
    "environment_id": "acme-telemetry-dev",
    "generation": 4,
    "token_1": {"token_id": "tid_1", "token": TOKEN_1, "fingerprint": "f1", "created_at": "x"},
}


async def test_a_deployment_pat_answer_with_only_the_current_token_is_enough_for_slot_1() -> None:
    credential = await issuer(200, DEPLOYMENT_BODY, 1).fetch()
    assert credential == Credential(TOKEN_1, "tid_1", 4, "acme-telemetry-dev", 1)


@pytest.mark.parametrize("token_2", ["missing", None])
async def test_slot_2_without_token_2_in_the_answer_says_what_to_do(token_2: object) -> None:
    body = dict(DEPLOYMENT_BODY) if token_2 == "missing" else {**DEPLOYMENT_BODY, "token_2": token_2}
    with pytest.raises(TokenUnavailable) as caught:
        await issuer(200, body, 2).fetch()
    assert caught.value.permanent
    assert "may read only the current token (--slot 1)" in caught.value.message


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:8001", None),
        ("http://127.9.9.9:8001/", None),
        ("http://localhost:8001", None),
        ("http://LOCALHOST.:8001", None),
        ("http://issuer.localhost", None),
        ("http://[::1]:8001", None),
        ("https://issuer.example.com", None),
        ("http://issuer.example.com:8001", "issuer.example.com"),
        ("http://10.0.0.5:8001", "10.0.0.5"),
        ("http://[fd00::1]:8001", "fd00::1"),
        ("HTTP://issuer:8001", "issuer"),
        ("http://127.0.0.1.nip.io", "127.0.0.1.nip.io"),  # a name is not resolved: not loopback by itself
        ("http://localhost.example.com", "localhost.example.com"),
    ],
)
def test_cleartext_host_is_any_http_host_but_loopback(url: str, host: str | None) -> None:
    assert cleartext_host(url) == host


async def test_the_notifier_client_sends_the_management_key_of_the_create_answer_on_ack_and_delete() -> None:
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((f"{request.method} {request.url.path}", request.headers.get("x-subscription-key")))
        if request.method == "POST" and request.url.path == "/v1/subscriptions":
            body = {"id": "sub_1", "secret": "whsec_x", "management_key": "smk_secret", "environment_id": "e"}
            return httpx.Response(201, json=body)
        return httpx.Response(204)

    client = NotifierClient("http://notifier", httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    credential = Credential(TOKEN_1)
    subscription = await client.subscribe(credential, "f1", "http://127.0.0.1:9/webhook", "restart")
    assert subscription.management_key == "smk_secret"
    assert "smk_secret" not in repr(subscription)
    await client.acknowledge("sub_1", 2, credential)
    await client.unsubscribe("sub_1", credential)
    assert seen == [
        ("POST /v1/subscriptions", None),
        ("POST /v1/subscriptions/sub_1/acks", "smk_secret"),
        ("DELETE /v1/subscriptions/sub_1", "smk_secret"),
    ]
