"""The heartbeat client (httpx.MockTransport) and the adoption options' parsing."""

from __future__ import annotations

import json

import httpx
import pytest

from services.agent.adapters.resolver import ResolverClient
from services.agent.domain import Credential, HeartbeatAnswered
from services.agent.settings import parse_duration, parse_window
from shared.tokens import generate_token

TOKEN = generate_token()
CREDENTIAL = Credential(TOKEN, "tid_2", 3, "acme-telemetry-dev", 2)


async def beat(handler: httpx.MockTransport | None = None, **answer: object) -> HeartbeatAnswered:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/portal/v1/heartbeat"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert json.loads(request.content) == {"deployment_id": "f1-producer"}
        return httpx.Response(int(answer.get("status", 200)), json=answer.get("body"))  # type: ignore[call-overload]

    async with httpx.AsyncClient(transport=handler or httpx.MockTransport(respond)) as client:
        return await ResolverClient("http://resolver/portal/", client).heartbeat(CREDENTIAL, "f1-producer")


async def test_an_answer_names_the_token_and_its_slot() -> None:
    body = {"environment_id": "acme-telemetry-dev", "token_id": "tid_2", "slot": 1}
    assert await beat(body=body) == HeartbeatAnswered(
        CREDENTIAL.fingerprint, "ok", "tid_2", 1, "acme-telemetry-dev"
    )
    unknown_slot = await beat(body={**body, "slot": None})
    assert (unknown_slot.outcome, unknown_slot.slot) == ("ok", None)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (401, {"error": "unauthorized", "message": "unknown or deactivated streaming token"}, "refused"),
        (404, {"error": "not_found", "message": "Not Found"}, "unsupported"),
        (405, None, "unsupported"),
        (503, {"error": "not_ready", "message": "catching up"}, "failed"),
        (200, {"slot": 7}, "failed"),
        (200, ["not", "an", "object"], "failed"),
    ],
)
async def test_every_other_answer_is_an_outcome_without_the_token(
    status: int, body: object, outcome: str
) -> None:
    answer = await beat(status=status, body=body)
    assert answer.outcome == outcome
    assert TOKEN not in answer.message


async def test_an_unreachable_resolver_is_a_failure() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    answer = await beat(httpx.MockTransport(refuse))
    assert answer.outcome == "failed"
    assert answer.message == "resolver unreachable at http://resolver/portal (ConnectError)"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1h30m", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15x", "-5", "1h 30m", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_windows() -> None:
    assert str(parse_window("02:00-04:30")) == "02:00-04:30 UTC"
    assert str(parse_window("22:00-02:00Z")) == "22:00-02:00 UTC"
    assert str(parse_window(" 9:05 - 9:35 UTC ")) == "09:05-09:35 UTC"
    for bad in ("2-4", "25:00-26:00", "02:00-02:00", "02:00", "02:60-03:00"):
        with pytest.raises(ValueError):
            parse_window(bad)
