"""Command-line tools the checks need, from Debian packages: `python -m ops.tools install`.

`promtool` checks the Prometheus rules and scrape config in `ops/prometheus/` and runs their
unit tests; the `prometheus` server from the same package scrapes a real worker in the
dashboard test (`tests/ops/`). Both come from Debian's `prometheus` package, installed with
apt-get when missing and run as root (the same helper as the local services,
`ops/services/process.py`). Standard library only, because it runs before any virtualenv exists.
"""

from __future__ import annotations

import shutil

from ops.services.process import ensure

# tool -> Debian package that ships it
TOOLS = {"promtool": "prometheus", "prometheus": "prometheus"}


def find(tool: str) -> str | None:
    """The tool's path on PATH (or in /usr/bin, where Debian puts it), or None."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/bin:/usr/sbin")


def require(tool: str) -> str:
    """The tool's path, installing its Debian package first when it is missing (root on apt systems)."""
    return ensure(lambda: find(tool), TOOLS[tool])


def install() -> dict[str, str]:
    """Every tool in TOOLS, installed when missing; their paths."""
    return {tool: require(tool) for tool in TOOLS}
