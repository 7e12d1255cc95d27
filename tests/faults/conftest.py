"""The fault-injection suite: `make test-faults` (FINPULSE_FAULTS=1 pytest tests/faults), about 10 minutes.

Skipped unless FINPULSE_FAULTS=1, so plain `pytest` / `make test` only lists it as skipped.
It brings up its own Kafka, Redis and PostgreSQL (tests/faults/services.py: Services) on
other ports, because its scenarios stop and restart them, and takes them down at the end.
After a full run it prints the results table and writes it into docs/reliability.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.deployment import Deployment
from tests.faults.report import Result, text_table, write_report
from tests.faults.services import Services

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("FINPULSE_FAULTS") == "1"
SCENARIOS = 5  # the docs table is rewritten only after a run of all of them

RESULTS = pytest.StashKey[list[Result]]()
FAILURES = pytest.StashKey[list[tuple[str, str]]]()
LABEL = pytest.StashKey[str]()
STARTED = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = []
    config.stash[FAILURES] = []
    config.stash[STARTED] = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="fault-injection suite: run `make test-faults` (sets FINPULSE_FAULTS=1; ~10 min)")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.faults)
            if not ENABLED:
                item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and LABEL in item.stash and report.when == "call":
        first = str(call.excinfo.value).strip().splitlines()[0] if call.excinfo else "failed"
        item.config.stash[FAILURES].append((item.stash[LABEL], first[:160]))
    return report


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    fault_services = Services()
    fault_services.up()
    try:
        yield fault_services
    finally:
        fault_services.down()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.training.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny-mbert")


@pytest.fixture
def deploy(
    request: pytest.FixtureRequest, services: Services, tiny_model: Path, tmp_path: Path
) -> Iterator[Callable[[str, str, int], Deployment]]:
    """Make the scenario's deployment (slug for names, label for the table); torn down after the test."""
    made: list[Deployment] = []

    def make(slug: str, label: str, seed: int) -> Deployment:
        request.node.stash[LABEL] = label
        deployment = Deployment(slug, label, services, tiny_model, tmp_path, seed)
        made.append(deployment)
        return deployment

    try:
        yield make
    finally:
        for deployment in made:
            deployment.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Result], None]:
    def add(result: Result) -> None:
        request.config.stash[RESULTS].append(result)
        print(f"\n{text_table([result])}")

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    results, failures = config.stash[RESULTS], config.stash[FAILURES]
    if not results and not failures:
        return
    terminalreporter.section("fault injection")
    if results:
        terminalreporter.write_line(text_table(results))
    for label, why in failures:
        terminalreporter.write_line(f"FAILED {label}: {why}")
    if len(results) == SCENARIOS and not failures:
        write_report(results, time.monotonic() - config.stash[STARTED])
        terminalreporter.write_line("docs/reliability.md updated")
    else:
        terminalreporter.write_line(
            f"docs/reliability.md not updated: {len(results)} of {SCENARIOS} scenarios passed in this run"
        )
