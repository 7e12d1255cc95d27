"""Fixtures for the operator's files in ops/ (Prometheus rules and config, the Grafana dashboard).

The checks run the real tools: `promtool` and the `prometheus` server from Debian's `prometheus`
package (`make tools`, `python -m ops.tools install`). Without them the tests skip on a laptop but
fail on CI (CI=true), where a missing tool is a bug. The dashboard test runs a real worker with the
integration fixtures (`tests/integration/conftest.py`), imported here.
"""

from __future__ import annotations

import os

import pytest

from ops.services.config import ServiceError
from ops.tools import require
from tests.integration.conftest import database, pipeline, services, tiny_model  # noqa: F401 - fixtures


def tool(name: str) -> str:
    """Path of a checking tool, installed when missing (root on Debian); skip (fail on CI) when it cannot be had."""
    try:
        return require(name)
    except ServiceError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(f"{exc} (make tools)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool("prometheus")
