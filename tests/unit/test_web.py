"""The HTTP conventions in shared.web: JSON errors that never echo a token, and a body-size cap."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from shared.errors import ApiError
from shared.ids import environment_id
from shared.tokens import generate_token
from shared.web import install_error_handlers

TOKEN = generate_token()


class Body(BaseModel):
    name: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, max_body_bytes=1000)

    @app.post("/things")
    async def create(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/things/{thing_id}")
    async def show(thing_id: str) -> dict[str, str]:
        raise ApiError(404, "not_found", f"no thing {thing_id!r}")

    @app.get("/envs/{org}")
    async def env(org: str) -> dict[str, str]:
        try:
            return {"id": environment_id(org, "p", "e")}
        except ValueError as exc:
            raise ApiError(422, "invalid_id", str(exc)) from None

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_a_token_used_as_a_field_name_is_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={TOKEN: 1})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert TOKEN not in response.text
    assert TOKEN[10:30] not in response.text


async def test_a_token_quoted_in_an_api_error_is_redacted(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/things/{TOKEN}")
    assert response.status_code == 404
    assert response.json()["message"] == "no thing 'stk_[REDACTED]'"
    org = await client.get(f"/envs/{TOKEN[:32]}")
    assert org.status_code == 422
    assert TOKEN[:32] not in org.text


async def test_a_declared_oversized_body_is_413_before_it_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {
        "error": "payload_too_large",
        "message": "request body is larger than 1000 bytes",
    }


async def test_a_streamed_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    response = await client.post("/things", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_a_small_valid_body_still_works(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"name": "ok"})
    assert response.status_code == 200
    assert response.json() == {"name": "ok"}
