"""Where each service lives: its port, URL, directory, PID file and log, and the one error type.

Every other module needs these, so they sit below all of them; the environment is read on
every call, so tests (and the fault suite) can point the services at other ports and dirs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOST = "127.0.0.1"
SERVICES = ("kafka", "redis", "postgres")  # Kafka first: it boots slowest, the others start meanwhile.
DEFAULT_TIMEOUT = 120.0
STOP_GRACE = 30.0
DB_USER = DB_NAME = "finpulse"

PORTS = {
    "kafka": ("FINPULSE_KAFKA_PORT", 9092),
    "kafka-controller": ("FINPULSE_KAFKA_CONTROLLER_PORT", 9093),
    "redis": ("FINPULSE_REDIS_PORT", 6379),
    "postgres": ("FINPULSE_POSTGRES_PORT", 5432),
}
_URLS = {
    "kafka": "kafka://{host}:{port}",
    "redis": "redis://{host}:{port}/0",
    "postgres": f"postgresql+asyncpg://{DB_USER}@{{host}}:{{port}}/{DB_NAME}",
}


class ServiceError(RuntimeError):
    """A service could not be prepared, started or stopped; the message says where to look."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def services_dir() -> Path:
    """Root of all data, logs and PID files; read on every call so tests can point it elsewhere.

    The ports are the machine's, so the default is one place per machine and user, shared by
    every checkout (a CI clone finds the services a developer started, and can stop them),
    under /var/tmp so that the postgres user can reach its data when we run as root.
    """
    default = Path("/var/tmp") / f"finpulse-services-{os.getuid()}"
    return Path(os.environ.get("FINPULSE_SERVICES_DIR") or default).resolve()


def port(name: str) -> int:
    """Port of NAME (or 'kafka-controller'), overridable through its FINPULSE_*_PORT variable."""
    env, default = PORTS[name]
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServiceError(f"{env}={raw!r} is not a port number")
    return int(raw)


def url(name: str) -> str:
    """The URL the worker should be given for NAME."""
    return _URLS[name].format(host=HOST, port=port(name))


def dir_of(name: str) -> Path:
    """NAME's own directory under the services dir."""
    return services_dir() / name


def pid_file(name: str) -> Path:
    return {
        "kafka": dir_of("kafka") / "kafka.pid",
        "redis": dir_of("redis") / "redis.pid",
        "postgres": dir_of("postgres") / "data" / "postmaster.pid",
    }[name]


def log_file(name: str) -> Path:
    """Main log of NAME, named in every failure message."""
    return {
        "kafka": dir_of("kafka") / "logs" / "server.log",
        "redis": dir_of("redis") / "redis.log",
        "postgres": dir_of("postgres") / "postgres.log",
    }[name]


def log_hint(name: str) -> str:
    hint = str(log_file(name))
    return f"{hint} and {dir_of('kafka') / 'logs' / 'kafka.out'}" if name == "kafka" else hint
