"""`python -m ops.tools install`: install the checking tools (promtool, prometheus) when missing."""

from __future__ import annotations

import argparse
import sys

from ops.services.config import ServiceError
from ops.tools import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.tools", description=__doc__)
    parser.add_argument("command", choices=["install"], help="install what is missing and print each tool's path")
    parser.parse_args(argv)
    try:
        for tool, path in install().items():
            print(f"{tool}: {path}")
    except ServiceError as exc:
        print(f"ops.tools: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
