"""The three OpenAPI documents against the real apps, with schemathesis (bounded, deterministic examples).

Each service is built in process as it runs, minus its broker connections: the issuer on SQLite with its
relay off, the resolver with a loaded table and a fake topic admin, the notifier on SQLite without Kafka,
checking streaming tokens against that real resolver app. Every operation gets ``MAX_EXAMPLES`` generated
requests, sent with a valid credential, a weaker one or none (:class:`Credentials`), half of them made to
break the schema (negative cases: their 422s and other errors are checked too), and must answer no 5xx,
only documented status codes, and bodies that match the documented schemas: error answers against the one
``ErrorBody`` of ``shared.web`` (:func:`test_every_error_answer_is_the_one_error_body`), the resolver's 2xx
answers against the model each route declares (:func:`test_every_resolver_answer_declares_its_model`,
:func:`test_every_resolver_2xx_body_matches_its_model`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

import shared
from services.issuer.auth import Role
from services.issuer.bootstrap import build_app as build_issuer
from services.issuer.settings import IssuerSettings
from services.notifier.auth import ResolverWhoami
from services.notifier.bootstrap import build_app as build_notifier
from services.notifier.settings import NotifierSettings
from services.resolver.admin import TopicInfo
from services.resolver.bootstrap import build_app as build_resolver
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin

pytestmark = pytest.mark.integration

Operation = APIOperation[Any, Any, Any, Any]  # schemathesis parametrizes neither its operations nor cases
AnyCase = Case[Any]

MAX_EXAMPLES = 10
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
NOWHERE = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # nothing may reach a broker here

ENV = Env("acme-telemetry-dev")


class Credentials:
    """The header sets each service's requests are sent with (drawn per example): a valid credential,
    a weaker one where roles exist, and none (the 401 must be documented too)."""

    issuer: ClassVar[list[dict[str, str]]] = []
    resolver: ClassVar[list[dict[str, str]]] = [
        {"Authorization": f"Bearer {ENV.token_1}", "X-Version": "2.0"},
        {},
    ]
    notifier: ClassVar[list[dict[str, str]]] = [{"Authorization": f"Bearer {ENV.token_1}"}, {}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract")


TOPIC = f"{ENV.environment_id}-f1-data"


@pytest.fixture(scope="module")
def resolver_app() -> Any:
    table = TokenTable()
    table.apply_event(ENV.environment_id, ENV.event())
    admin = FakeAdmin()  # one topic, so the topic reads answer a topic object to check, not only 404/[]
    admin.topics_[TOPIC] = TopicInfo(TOPIC, 3, 1, True, {"cleanup.policy": "compact", "retention.ms": "-1"})
    return build_resolver(
        # No usage records: there is no broker here, and a flush at shutdown would wait 5 s for one.
        ResolverSettings(kafka=NOWHERE, usage_enabled=False),
        table=table,
        admin=admin,
        start_replica=False,
        status=lambda: Status.READY,
    )


@pytest.fixture(scope="module")
def issuer_app(data_dir: Path) -> Any:
    settings = IssuerSettings(
        database_url=f"sqlite:///{data_dir / 'issuer.db'}",
        kafka=NOWHERE,
        runtime=RuntimeSettings(env="test", data_dir=data_dir / "issuer"),
    )
    app = build_issuer(settings, start_relay=False)
    # PATs are records now: a JWT the issuer did not record is a 401, so record an admin and a member PAT.
    pats = [app.issue_pat(f"contract-{role.value}", role)[1] for role in (Role.ADMIN, Role.MEMBER)]
    Credentials.issuer = [*({"Authorization": f"Bearer {pat}"} for pat in pats), {}]
    return app


@pytest.fixture(scope="module")
def notifier_app(data_dir: Path, resolver_app: Any) -> Any:
    settings = NotifierSettings(
        database_url=f"sqlite:///{data_dir / 'notifier.db'}",
        resolver_url="http://resolver",
        consume=False,
        deliver=False,
        kafka=NOWHERE,
    )
    verifier = ResolverWhoami("http://resolver", 0, transport=httpx.ASGITransport(app=resolver_app))
    return build_notifier(settings, verifier=verifier)


@pytest.fixture(scope="module", autouse=True)
def _stop_lifespans() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # the lifespans schemathesis' ASGI client started end with the module


SERVICES = ("issuer", "resolver", "notifier")

BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same examples on every run
    database=None,
    deadline=None,  # never a verdict on wall-clock speed
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _own_workspace(case: AnyCase) -> AnyCase:
    case.path_parameters = {**(case.path_parameters or {}), "workspace": ENV.environment_id}
    return case


def _strategy(operation: Operation) -> st.SearchStrategy[AnyCase]:
    """Generated cases, half of them negative (not fitting the schema: the 422s and their bodies); where
    the path names a workspace, half of them name the caller's own (a random one is always a 403 and would
    leave the rest of the route untested)."""
    positive = operation.as_strategy()
    if "{workspace}" in operation.path:
        positive = st.one_of(positive, positive.map(_own_workspace))
    return st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))


def contract_failures(operation: Operation, credentials: list[dict[str, str]]) -> list[str]:
    """What schemathesis finds wrong with ``operation`` in ``MAX_EXAMPLES`` requests: one line per
    distinct (status, failure), e.g. ``404 Undocumented status code``."""
    found: dict[str, None] = {}

    @BOUNDED
    @given(case=_strategy(operation), sent=st.sampled_from(credentials))
    def run(case: AnyCase, sent: dict[str, str]) -> None:
        response = case.call(headers=sent)
        try:
            case.validate_response(response, checks=CHECKS, headers=sent)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports a group of failures
            for failure in getattr(exc, "exceptions", [exc]):
                title = getattr(failure, "title", None) or type(failure).__name__
                found[f"{response.status_code} {title}"] = None

    run()
    return sorted(found)


def operations(request: pytest.FixtureRequest, service: str) -> dict[str, Operation]:
    app = request.getfixturevalue(f"{service}_app")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    found: dict[str, Operation] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found[f"{service} {result.ok().label}"] = result.ok()
    return found


def credentials(service: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = getattr(Credentials, service)
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_keeps_its_documented_contract(request: pytest.FixtureRequest, service: str) -> None:
    failures = {}
    for label, operation in operations(request, service).items():
        if found := contract_failures(operation, credentials(service)):
            failures[label] = found
    assert not failures, "\n".join(f"{label}: {'; '.join(lines)}" for label, lines in failures.items())


ERROR_BODY = "#/components/schemas/ErrorBody"


W = ENV.environment_id
# One request of a valid caller per resolver operation, and the 2xx it answers: the generated cases above
# rarely reach some 2xx (a random topic name is a 400 or 404), so each answer's body is checked here too.
RESOLVER_2XX: dict[str, tuple[dict[str, str], Any, int]] = {
    "GET /v1/topics/{name}": ({"name": "f1-data"}, None, 200),  # answered by the fast path
    "GET /v1/environments/{environment_id}/generation": ({"environment_id": W}, None, 200),
    "GET /v1/whoami": ({}, None, 200),
    "POST /v1/heartbeat": ({}, {"deployment_id": "contract-1"}, 200),
    "GET /workspaces": ({}, None, 200),
    "GET /workspaces/{workspace}": ({"workspace": W}, None, 200),
    "GET /workspaces/{workspace}/broker/librdkafka": ({"workspace": W}, None, 200),
    "GET /{workspace}/topics/{name}": ({"workspace": W, "name": "f1-data"}, None, 200),
    "GET /{workspace}/topics": ({"workspace": W}, None, 200),
    "POST /{workspace}/topics": ({"workspace": W}, {"name": "f1-data", "configuration": None}, 200),
}


def test_every_resolver_2xx_body_matches_its_model(request: pytest.FixtureRequest) -> None:
    found = operations(request, "resolver")
    assert {f"resolver {label}" for label in RESOLVER_2XX} == {
        label for label in found if not label.startswith("resolver GET /health/")
    }
    sent = credentials("resolver")[0]
    failures = []
    for label, (parameters, body, status) in RESOLVER_2XX.items():
        operation = found[f"resolver {label}"]
        case = operation.Case(path_parameters=parameters, **({} if body is None else {"body": body}))
        response = case.call(headers=sent)
        if response.status_code != status:
            failures.append(f"{label}: {response.status_code} {response.text[:200]}")
            continue
        try:
            case.validate_response(response, checks=CHECKS, headers=sent)
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{label}: {exc}")
    assert not failures, "\n".join(failures)


def test_every_resolver_answer_declares_its_model(resolver_app: Any) -> None:
    """Every 2xx of the resolver names a schema (a component, or an array of one), so the conformance
    check above validates its bodies; the routes return their own orjson bytes (the lookup from its fast
    path), which FastAPI does not validate. The health routes are ``shared.web``'s."""
    spec = resolver_app.openapi()
    undeclared = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for code, answer in operation["responses"].items():
                if code[0] != "2" or path.startswith("/health/"):
                    continue
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if "$ref" not in schema.get("items", schema):
                    undeclared.append(f"{method} {path} {code}: {schema}")
    assert not undeclared, "\n".join(undeclared)


def _schema_refs(answer: dict[str, Any]) -> list[str]:
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    return [s["$ref"] for s in [schema, *schema.get("anyOf", [])] if "$ref" in s]


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_answer_is_the_one_error_body(request: pytest.FixtureRequest, service: str) -> None:
    """Every 4xx/5xx of every operation is (or, for the issuer's 409 token_1_in_use, may be) the one
    ``ErrorBody``; FastAPI's HTTPValidationError is gone; the statuses any route can answer are there."""
    spec = request.getfixturevalue(f"{service}_app").openapi()
    assert spec["info"]["version"] == shared.__version__  # pyproject's version, the one place
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert {"error", "message"} <= set(schemas["ErrorBody"]["required"])
    wrong = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            needed = {"500"}
            if "requestBody" in operation:
                needed |= {"400", "413", "422"}
            if operation.get("parameters"):
                needed.add("422")
            if operation.get("security"):
                needed |= {"401", "403"}
            if service == "issuer" and path.startswith(("/v1/", "/ui/")):
                needed.add("503")  # the database's outage
            wrong += [f"{method} {path}: no {code}" for code in sorted(needed - set(responses))]
            for code, answer in responses.items():
                readiness = path == "/health/ready" and code == "503"  # the readiness detail, not an error
                if code[0] in "45" and not readiness and ERROR_BODY not in _schema_refs(answer):
                    wrong.append(f"{method} {path} {code}: {_schema_refs(answer)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("service", ["issuer", "resolver"])  # the notifier's: by the negative cases above
def test_the_422_body_is_the_documented_one(request: pytest.FixtureRequest, service: str) -> None:
    """An invalid query parameter answers the ``invalid_request`` body the document describes, naming the
    field and never echoing the value."""
    app = request.getfixturevalue(f"{service}_app")
    path = {"issuer": "/v1/pats", "resolver": "/v1/heartbeat", "notifier": "/v1/subscriptions"}[service]
    headers = credentials(service)[0]
    hostile = "sx_" + "A" * 40

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if service == "resolver":
                return await client.post(path, headers=headers, json={"deployment_id": [hostile]})
            return await client.get(path, headers=headers, params={"limit": hostile})

    response = asyncio.run(send())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request", body
    assert body["message"], body
    assert hostile not in response.text
    spec = app.openapi()
    answer = spec["paths"][path]["post" if service == "resolver" else "get"]["responses"]["422"]
    assert _schema_refs(answer) == [ERROR_BODY]
    jsonschema.validate(body, spec["components"]["schemas"]["ErrorBody"])
