"""Local Kafka, Redis and PostgreSQL for development and tests, without Docker.

Runs real servers from the machine's own binaries (Kafka's jars are resolved once with Maven),
keeps their data, logs and PID files under one directory, and reuses anything that already
answers on a port. Standard library only, because it runs before any virtualenv exists.

    python -m ops.services up [NAME...] | down | status | env [--kafka-sasl] | start NAME | stop NAME | restart NAME

Environment: FINPULSE_SERVICES_DIR (default /var/tmp/finpulse-services-<uid>), FINPULSE_KAFKA_PORT (9092),
FINPULSE_KAFKA_CONTROLLER_PORT (9093), FINPULSE_KAFKA_SASL_PORT (9094), FINPULSE_REDIS_PORT (6379),
FINPULSE_POSTGRES_PORT (5432).

Every service takes a password, made once into the owner-only `credentials` file of the services
dir; `env` prints the worker's settings with them, and `client_env()` gives them to tests.

This file is the public API; the work is split by job:

- `config.py`: ports, URLs, directories, PID and log files, passwords, ServiceError;
- `process.py`: sockets, PID files, stopping with a grace period, setup commands, apt installs;
- `kafka.py`, `redis.py`, `postgres.py`: how to probe, launch and stop each server;
- `lifecycle.py`: up/down/start/stop/restart/status (reuse what answers, stop only ours);
- `cli.py`: the `python -m ops.services` / `finpulse services` command line.
"""

from __future__ import annotations

from ops.services.cli import main
from ops.services.config import (
    DB_NAME,
    DB_USER,
    DEFAULT_TIMEOUT,
    HOST,
    SERVICES,
    STOP_GRACE,
    ServiceError,
    client_env,
    credentials,
    credentials_file,
    kafka_cafile,
    log_file,
    port,
    services_dir,
    url,
)
from ops.services.lifecycle import down, is_ours, is_running, restart, start, status, stop, up

__all__ = [
    "DB_NAME",
    "DB_USER",
    "DEFAULT_TIMEOUT",
    "HOST",
    "SERVICES",
    "STOP_GRACE",
    "ServiceError",
    "client_env",
    "credentials",
    "credentials_file",
    "down",
    "is_ours",
    "is_running",
    "kafka_cafile",
    "log_file",
    "main",
    "port",
    "restart",
    "services_dir",
    "start",
    "status",
    "stop",
    "up",
    "url",
]
