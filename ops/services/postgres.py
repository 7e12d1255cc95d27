"""PostgreSQL from the machine's Debian packages: one cluster with password auth and the finpulse database.

Over TCP every role needs its password (SCRAM), and the worker's role `finpulse` may log in
and create databases (each test makes one) but is no superuser, so it cannot run programs
through COPY … TO PROGRAM. The superuser is the OS user that runs the cluster ('postgres' as
root), over the unix socket in its owner-only directory (peer). A cluster made before
passwords (trust, superuser finpulse) is upgraded in place on its next start.

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
from ops.services.config import (
    DB_NAME,
    DB_USER,
    HOST,
    STOP_GRACE,
    ServiceError,
    credentials,
    dir_of,
    log_file,
    port,
    say,
)

CMDLINE_MARK = b"postgres"
BOOTSTRAP_OID = 10  # the role initdb creates: the superuser, named finpulse in clusters from before passwords

_HOSTS = "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"
_HBA = "# Written by finpulse services: the cluster's OS user over the socket, everyone else by password.\n" \
       "local all all peer\n" + _HOSTS
# While a cluster from before passwords is upgraded, its superuser is still 'finpulse', which no OS user
# maps to: trust the socket, whose directory only the cluster's OS user can enter, until the roles are fixed.
_HBA_UPGRADING = "# finpulse services: upgrade in progress, see ops/services/postgres.py\nlocal all all trust\n" + _HOSTS

# Objects the bootstrap role owned in a database from before passwords, given to the worker's role.
_REASSIGN = f"""
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT nspname FROM pg_namespace WHERE nspowner = {BOOTSTRAP_OID}
             AND nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%'
    LOOP EXECUTE format('ALTER SCHEMA %I OWNER TO {DB_USER}', r.nspname); END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = {BOOTSTRAP_OID} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
             ORDER BY c.relkind = 'S'  -- tables first: they take their own sequences along
    LOOP EXECUTE format('ALTER TABLE %s OWNER TO {DB_USER}', r.name); END LOOP;
    FOR r IN SELECT t.oid::regtype AS name FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typowner = {BOOTSTRAP_OID} AND t.typtype IN ('e', 'd')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    LOOP EXECUTE format('ALTER TYPE %s OWNER TO {DB_USER}', r.name); END LOOP;
END $$;
"""


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


def _pg(tool: str, *args: str, what: str, input: str | None = None) -> str:
    """Run a PostgreSQL program; initdb and pg_ctl refuse root, so root runs them as 'postgres'."""
    command = [str(Path(process.ensure(_bin_dir, "postgresql")) / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return process.run(command, what, cwd=dir_of("postgres"), input=input)


def _superuser() -> str:
    """The cluster's OS user, which is also its superuser role, so peer authentication lets it in."""
    return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _psql(sql: str, what: str, database: str = "postgres", user: str | None = None) -> str:
    """SQL from standard input (it may hold a password) as the superuser, over the owner-only socket."""
    socket_dir = str(dir_of("postgres") / "run")
    return _pg("psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", str(port("postgres")),
               "-U", user or _superuser(), "-d", database, what=f"postgres: {what}", input=sql)


def _hand_to_postgres_user() -> None:
    """As root, give the postgres dir to the postgres user and check it can reach it."""
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root needs a 'postgres' system user (package postgresql creates it)") from None
    if any(path.stat().st_uid != owner.pw_uid for path in (dir_of("postgres"), dir_of("postgres") / "run")):
        process.run(["chown", "-R", "postgres:postgres", str(dir_of("postgres"))], "postgres: chown data dir")
    reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(dir_of("postgres"))], check=False)
    if reachable.returncode != 0:
        raise ServiceError(f"the postgres user cannot reach {dir_of('postgres')}; "
                           "set FINPULSE_SERVICES_DIR to a directory every user can traverse (e.g. /var/tmp/finpulse)")


def _hba() -> Path:
    return dir_of("postgres") / "data" / "pg_hba.conf"


def outdated() -> bool:
    """Ours, but made before passwords (or its upgrade was interrupted): pg_hba.conf still trusts someone."""
    try:
        lines = _hba().read_text().splitlines()
    except OSError:
        return False
    return any("trust" in line.split() for line in lines if not line.lstrip().startswith("#"))


def launch(timeout: float) -> None:
    """initdb once (peer on the socket, SCRAM over TCP), start with pg_ctl -w, then the role and database.

    A cluster from before passwords is first started with only its socket trusted, adopted, then closed.
    """
    data = dir_of("postgres") / "data"
    (dir_of("postgres") / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
    (dir_of("postgres") / "run").chmod(0o700)  # the superuser's socket
    if os.geteuid() == 0:
        _hand_to_postgres_user()
    if not (data / "PG_VERSION").exists():
        say("postgres: initialising cluster (first run only)...")
        _pg("initdb", "-D", str(data), "-U", _superuser(), "--auth-local=peer", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C.UTF-8", what="postgres: initdb")
    upgrading = outdated()
    if upgrading:
        say("postgres: upgrading a cluster from before passwords (trust auth, superuser finpulse)...")
        _hba().write_text(_HBA_UPGRADING)  # rewritten in place: keeps the postgres user's ownership
    options = f"-p {port('postgres')} -c listen_addresses={HOST} -k {shlex.quote(str(dir_of('postgres') / 'run'))}"
    _pg("pg_ctl", "start", "-w", "-t", str(max(int(timeout), 1)), "-D", str(data), "-l", str(log_file("postgres")),
        "-o", options, what=f"postgres: pg_ctl start (log: {log_file('postgres')})")
    if upgrading:
        _adopt_superuser()
    _create_role_and_database()
    if upgrading:
        _give_databases_to_worker_role()
        _hba().write_text(_HBA)
        _pg("pg_ctl", "reload", "-D", str(data), what="postgres: pg_ctl reload")
        say(f"postgres: upgraded; {DB_USER} is no longer a superuser and needs its password")


def _adopt_superuser() -> None:
    """Rename the old bootstrap superuser 'finpulse' to the OS user's name, freeing the name for the worker's role.

    A role cannot rename itself and the bootstrap role cannot drop SUPERUSER, so a helper role renames it.
    """
    try:
        _psql("SELECT 1", "superuser check")
        return  # adopted by an earlier, interrupted upgrade
    except ServiceError:
        pass
    helper = "finpulse_upgrade"
    _psql(f"DROP ROLE IF EXISTS {helper}; CREATE ROLE {helper} SUPERUSER LOGIN", "helper role", user=DB_USER)
    _psql(f'ALTER ROLE {DB_USER} RENAME TO "{_superuser()}"', "rename the superuser", user=helper)
    _psql(f"DROP ROLE {helper}", "drop the helper role")


def _create_role_and_database() -> None:
    """The worker's role (login, createdb, nothing more) with the password of the credentials file, and its database.

    Run on every start, so a regenerated credentials file takes effect.
    """
    password = credentials()["postgres"].replace("'", "''")
    _psql(f"""
        SELECT 'CREATE ROLE {DB_USER}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}') \\gexec
        ALTER ROLE {DB_USER} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{password}';
        SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_USER}'
            WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}') \\gexec
        """, f"role and database {DB_NAME}")


def _give_databases_to_worker_role() -> None:
    """The databases the old superuser owned (finpulse's, tests' leftovers), and all in them, to the worker's role."""
    names = _psql(f"SELECT datname FROM pg_database WHERE datdba = {BOOTSTRAP_OID} AND datallowconn"
                  " AND datname NOT IN ('postgres', 'template1')", "database list").split()
    for name in names:
        _psql(f'ALTER DATABASE "{name}" OWNER TO {DB_USER}', f"owner of database {name}")
        _psql(_REASSIGN, f"owner of the objects in {name}", database=name)
    say(f"postgres: {len(names)} database(s) now owned by {DB_USER}")


def stop(pid: int) -> None:
    """Fast shutdown (rolls back open transactions); immediate if that does not finish in time."""
    data = str(dir_of("postgres") / "data")
    try:
        _pg("pg_ctl", "stop", "-m", "fast", "-w", "-t", str(int(STOP_GRACE)), "-D", data, what="postgres: pg_ctl stop")
    except ServiceError:
        say(f"postgres: fast shutdown did not finish in {STOP_GRACE:.0f} s, using immediate")
        _pg("pg_ctl", "stop", "-m", "immediate", "-w", "-D", data, what="postgres: pg_ctl stop -m immediate")
    process.wait_gone(pid, 10)
