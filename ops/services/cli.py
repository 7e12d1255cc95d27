"""The command line shared by `python -m ops.services` and `finpulse services`: parsing, status table, exit codes."""

from __future__ import annotations

import argparse

from ops.services.config import DEFAULT_TIMEOUT, HOST, SERVICES, ServiceError, client_env, credentials_file, say
from ops.services.lifecycle import down, restart, start, status, stop, up


def _print_status() -> None:
    for row in status():
        state = "running" if row["running"] else "stopped"
        owner = "ours" if row["ours"] else ("external" if row["running"] else "-")
        print(f"{row['name']:<9} {HOST}:{row['port']:<6} {state:<8} {owner:<9} {row['url']}")


def _print_env(kafka_sasl: bool) -> None:
    """FINPULSE_* lines for `export $(…)` or a `.env` file; the passwords come from the owner-only credentials file."""
    if not credentials_file().exists():
        say(f"note: no {credentials_file()} yet (run `up`): these services take no passwords")
    for name, value in client_env(kafka_sasl).items():
        print(f"{name}={value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finpulse services",
                                     description="Local Kafka, Redis and PostgreSQL without Docker.")
    timing = argparse.ArgumentParser(add_help=False)
    timing.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for readiness (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", parents=[timing], help="start what is not running, reuse the rest").add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(SERVICES)} (default: all)")
    commands.add_parser("down", help="stop the services this script started")
    commands.add_parser("status", help="show ports, state and URLs")
    commands.add_parser("env", help="print the worker's FINPULSE_* settings for these services, with passwords").add_argument(
        "--kafka-sasl", action="store_true", help="use the SASL_SSL listener (SCRAM-SHA-512, the local CA)")
    for command, about in (("start", "start one service"), ("restart", "stop and start one of ours")):
        commands.add_parser(command, parents=[timing], help=about).add_argument("name", choices=SERVICES)
    commands.add_parser("stop", help="stop one of ours").add_argument("name", choices=SERVICES)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m ops.services` and `finpulse services`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            up(args.names, args.timeout)
        elif args.command == "down":
            down()
        elif args.command == "status":
            _print_status()
        elif args.command == "env":
            _print_env(args.kafka_sasl)
        elif args.command == "start":
            start(args.name, args.timeout)
        elif args.command == "restart":
            restart(args.name, args.timeout)
        else:
            stop(args.name)
    except ServiceError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
