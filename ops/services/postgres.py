"""PostgreSQL from the machine's Debian packages: one cluster with trust auth and the finpulse database.

Its tools refuse to run as root and live off PATH on Debian, so this module finds them and,
as root, runs them as the 'postgres' user on a directory handed over to that user.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import struct
import subprocess
from pathlib import Path

from ops.services import process
from ops.services.config import DB_NAME, DB_USER, HOST, STOP_GRACE, ServiceError, dir_of, log_file, port, say, services_dir

CMDLINE_MARK = b"postgres"


def ready(port_: int) -> bool:
    """Like pg_isready: any answer to a startup packet except 'starting up' (57P03) means ready."""
    params = f"user\0{DB_USER}\0database\0{DB_NAME}\0\0".encode()
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(struct.pack(">ii", 8 + len(params), 196608) + params)
            kind, size = struct.unpack(">ci", process.recv_exact(sock, 5))
            payload = process.recv_exact(sock, min(max(size - 4, 0), 4096))
            if kind == b"R":
                sock.sendall(b"X\0\0\0\4")  # Terminate, so the server logs no broken connection
    except OSError:
        return False
    return kind == b"R" or (kind == b"E" and b"C57P03\0" not in payload)


def _bin_dir() -> str | None:
    """Newest /usr/lib/postgresql/N/bin (Debian keeps initdb and pg_ctl off PATH), else PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return str(found[-1].parent)
    on_path = shutil.which("pg_ctl")
    return str(Path(on_path).parent) if on_path else None


def _pg(tool: str, *args: str, what: str) -> str:
    """Run a PostgreSQL program; initdb and pg_ctl refuse root, so root runs them as 'postgres'."""
    command = [str(Path(process.ensure(_bin_dir, "postgresql")) / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return process.run(command, what, cwd=dir_of("postgres"))


def _hand_to_postgres_user() -> None:
    """As root, give the postgres dir to the postgres user and check it can reach it."""
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root needs a 'postgres' system user (package postgresql creates it)") from None
    root = services_dir()
    root.chmod(root.stat().st_mode | 0o111)  # others may traverse (not list) the services dir
    if dir_of("postgres").stat().st_uid != owner.pw_uid:
        process.run(["chown", "-R", "postgres:postgres", str(dir_of("postgres"))], "postgres: chown data dir")
    reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(dir_of("postgres"))], check=False)
    if reachable.returncode != 0:
        raise ServiceError(f"the postgres user cannot reach {dir_of('postgres')}; "
                           "set FINPULSE_SERVICES_DIR to a directory every user can traverse (e.g. /var/tmp/finpulse)")


def launch(timeout: float) -> None:
    """initdb once (trust auth, superuser finpulse), start with pg_ctl -w, create the database."""
    data = dir_of("postgres") / "data"
    (dir_of("postgres") / "run").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _hand_to_postgres_user()
    if not (data / "PG_VERSION").exists():
        say("postgres: initialising cluster (first run only)...")
        _pg("initdb", "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
            what="postgres: initdb")
    options = f"-p {port('postgres')} -c listen_addresses={HOST} -k {shlex.quote(str(dir_of('postgres') / 'run'))}"
    _pg("pg_ctl", "start", "-w", "-t", str(max(int(timeout), 1)), "-D", str(data), "-l", str(log_file("postgres")),
        "-o", options, what=f"postgres: pg_ctl start (log: {log_file('postgres')})")
    _create_database()


def _create_database() -> None:
    connect = ["-h", HOST, "-p", str(port("postgres")), "-U", DB_USER]
    exists = _pg("psql", "-X", *connect, "-d", "postgres", "-tAc",
                 f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'", what="postgres: database lookup")
    if exists.strip() != "1":
        _pg("createdb", *connect, DB_NAME, what=f"postgres: createdb {DB_NAME}")
        say(f"postgres: created database {DB_NAME}")


def stop(pid: int) -> None:
    """Fast shutdown (rolls back open transactions); immediate if that does not finish in time."""
    data = str(dir_of("postgres") / "data")
    try:
        _pg("pg_ctl", "stop", "-m", "fast", "-w", "-t", str(int(STOP_GRACE)), "-D", data, what="postgres: pg_ctl stop")
    except ServiceError:
        say(f"postgres: fast shutdown did not finish in {STOP_GRACE:.0f} s, using immediate")
        _pg("pg_ctl", "stop", "-m", "immediate", "-w", "-D", data, what="postgres: pg_ctl stop -m immediate")
    process.wait_gone(pid, 10)
