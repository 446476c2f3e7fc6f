"""The whole stack for the end-to-end tests, once per module, on the session's broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.kafka_broker import ApacheKafkaBroker
from tests.e2e.harness import RunningStack, running_stack


@pytest.fixture(scope="module")
def e2e_stack(
    kafka_broker: ApacheKafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    with running_stack(kafka_broker, tmp_path_factory.mktemp("stack")) as stack:
        yield stack
