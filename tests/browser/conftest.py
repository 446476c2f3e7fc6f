"""The page in a real browser: Playwright (``playwright-core`` from npm, pinned by ``package-lock.json``)
driving Debian's ``chromium`` headless, never a browser download. ``.ci/browser`` installs both; without
them the tests are skipped locally and fail in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.kafka_broker import ApacheKafkaBroker
from tests.e2e.harness import RunningStack, running_stack

HERE = Path(__file__).parent
SCENARIOS = HERE / "scenario.mjs"


def _tools() -> tuple[str, str] | str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    node = shutil.which("node")
    if chromium is None:
        return "Debian's chromium is not installed (bash .ci/browser installs it)"
    if node is None:
        return "node is not installed (bash .ci/browser installs it)"
    if not (HERE / "node_modules" / "playwright-core" / "package.json").exists():
        return "playwright-core is not installed in tests/browser (bash .ci/browser: npm ci there)"
    return chromium, node


@pytest.fixture(scope="session")
def browser_tools() -> tuple[str, str]:
    found = _tools()
    if isinstance(found, str):
        if os.environ.get("CI"):
            pytest.fail(f"{found}; CI runs .ci/browser first")
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def page_stack(
    kafka_broker: ApacheKafkaBroker, tmp_path_factory: pytest.TempPathFactory, browser_tools: tuple[str, str]
) -> Iterator[RunningStack]:
    with running_stack(kafka_broker, tmp_path_factory.mktemp("page-stack")) as stack:
        yield stack


@pytest.fixture
def scenario(
    browser_tools: tuple[str, str], page_stack: RunningStack, tmp_path: Path
) -> Callable[..., dict[str, Any]]:
    """``scenario(name, **config)``: run one scenario of scenario.mjs in the browser; its result as a dict
    (screenshots in the test's tmp dir). Fails with the browser's own words when the scenario did."""
    chromium, node = browser_tools

    def run(name: str, timeout: float = 360, **config: Any) -> dict[str, Any]:
        shots = tmp_path / "screenshots"
        shots.mkdir(exist_ok=True)
        full = {
            "url": page_stack.urls["issuer"],
            "admin_pat": page_stack.admin_pat,
            "chromium": chromium,
            "screenshots": str(shots),
            **config,
        }
        completed = subprocess.run(
            [node, str(SCENARIOS), name],
            cwd=HERE,
            env={**os.environ, "STREAMTOKEN_BROWSER_CONFIG": json.dumps(full)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"scenario {name} printed no result\n{completed.stdout}\n{completed.stderr}"
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
        assert result.get("ok"), (
            f"scenario {name} failed: {result.get('error')}\nsteps: {result.get('steps')}\n"
            f"page errors: {result.get('page_errors')}\nstderr: {completed.stderr[-3000:]}"
        )
        assert completed.returncode == 0
        return result

    return run
