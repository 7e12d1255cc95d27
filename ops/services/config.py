"""Where each service lives: its port, URL, directory, PID file and log, its password, and the one error type.

Every other module needs these, so they sit below all of them; the environment is read on
every call, so tests (and the fault suite) can point the services at other ports and dirs.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

HOST = "127.0.0.1"
SERVICES = ("kafka", "redis", "postgres")  # Kafka first: it boots slowest, the others start meanwhile.
DEFAULT_TIMEOUT = 120.0
STOP_GRACE = 30.0
DB_USER = DB_NAME = KAFKA_USER = "finpulse"
KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"  # the broker also takes SCRAM-SHA-256 and PLAIN for the same user
CREDENTIALS = ("postgres", "redis", "kafka", "kafka-keystore")  # one random password each, made once

PORTS = {
    "kafka": ("FINPULSE_KAFKA_PORT", 9092),
    "kafka-controller": ("FINPULSE_KAFKA_CONTROLLER_PORT", 9093),
    "kafka-sasl": ("FINPULSE_KAFKA_SASL_PORT", 9094),
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
    """Port of NAME (or 'kafka-controller', 'kafka-sasl'), overridable through its FINPULSE_*_PORT variable."""
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


# --- credentials -----------------------------------------------------------------------------------


def credentials_file() -> Path:
    """Owner-only file of the services' passwords, so no other local user can use or read them."""
    return services_dir() / "credentials"


def credentials() -> dict[str, str]:
    """The passwords `up` made, by service; empty before the first `up` (servers from before passwords)."""
    try:
        lines = credentials_file().read_text().splitlines()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def ensure_credentials() -> dict[str, str]:
    """Make the missing passwords once (kept across restarts: the data dirs remember them)."""
    found = credentials()
    if all(found.get(name) for name in CREDENTIALS):
        return found
    found = {name: found.get(name) or secrets.token_urlsafe(24) for name in CREDENTIALS}
    text = "# Passwords of the local services, made by `finpulse services up`; `finpulse services env` uses them.\n"
    write_private(credentials_file(), text + "".join(f"{name}={found[name]}\n" for name in CREDENTIALS))
    return found


def write_private(path: Path, text: str) -> None:
    """Replace PATH with TEXT readable by its owner only, never briefly by others (it may hold passwords)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    partial.replace(path)


def kafka_cafile() -> Path:
    """The local CA's certificate (PEM), which clients of the SASL_SSL listener trust."""
    return dir_of("kafka") / "tls" / "ca.pem"


def client_env(kafka_sasl: bool = False) -> dict[str, str]:
    """The worker's FINPULSE_* settings for these services, passwords included; with KAFKA_SASL, over SASL_SSL."""
    found = credentials()

    def login(user: str, service: str) -> str:
        return f"{user}:{quote(found[service], safe='')}@" if found.get(service) else (f"{user}@" if user else "")

    kafka_port = port("kafka-sasl") if kafka_sasl else port("kafka")
    env = {
        "FINPULSE_KAFKA_URL": f"kafka://{HOST}:{kafka_port}",
        "FINPULSE_REDIS_URL": f"redis://{login('', 'redis')}{HOST}:{port('redis')}/0",
        "FINPULSE_DATABASE_URL": f"postgresql+asyncpg://{login(DB_USER, 'postgres')}{HOST}:{port('postgres')}/{DB_NAME}",
    }
    if kafka_sasl:
        if not found.get("kafka"):
            raise ServiceError(f"no Kafka password in {credentials_file()}: run `finpulse services up` first")
        env.update({
            "FINPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FINPULSE_KAFKA_SASL_MECHANISM": KAFKA_SASL_MECHANISM,
            "FINPULSE_KAFKA_SASL_USERNAME": KAFKA_USER,
            "FINPULSE_KAFKA_SASL_PASSWORD": found["kafka"],
            "FINPULSE_KAFKA_SSL_CAFILE": str(kafka_cafile()),
        })
    return env
