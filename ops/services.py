"""Local Kafka, Redis and PostgreSQL for development and tests, without Docker.

Runs real servers from the machine's own binaries (Kafka's jars are resolved once with Maven),
keeps their data, logs and PID files under one directory, and reuses anything that already
answers on a port. Standard library only, because it runs before any virtualenv exists.

    python -m ops.services up [NAME...] | down | status | start NAME | stop NAME | restart NAME

Environment: FINPULSE_SERVICES_DIR (default /var/tmp/finpulse-services-<uid>), FINPULSE_KAFKA_PORT (9092),
FINPULSE_KAFKA_CONTROLLER_PORT (9093), FINPULSE_REDIS_PORT (6379), FINPULSE_POSTGRES_PORT (5432).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SERVICES = ("kafka", "redis", "postgres")  # Kafka first: it boots slowest, the others start meanwhile.
DEFAULT_TIMEOUT = 120.0
STOP_GRACE = 30.0
DB_USER = DB_NAME = "finpulse"

_OPS_DIR = Path(__file__).resolve().parent
_PORTS = {
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
# /proc/PID/cmdline must contain this, so a stale PID file reused by another process is ignored.
_CMDLINE_MARKS = {"kafka": b"kafka.Kafka", "redis": b"redis-server", "postgres": b"postgres"}

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""

_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=true
num.partitions=1
log.retention.hours=24
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


class ServiceError(RuntimeError):
    """A service could not be prepared, started or stopped; the message says where to look."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- configuration -------------------------------------------------------------------------


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
    env, default = _PORTS[name]
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServiceError(f"{env}={raw!r} is not a port number")
    return int(raw)


def url(name: str) -> str:
    """The URL the worker should be given for NAME."""
    return _URLS[name].format(host=HOST, port=port(name))


def _dir(name: str) -> Path:
    return services_dir() / name


def _pid_file(name: str) -> Path:
    return {
        "kafka": _dir("kafka") / "kafka.pid",
        "redis": _dir("redis") / "redis.pid",
        "postgres": _dir("postgres") / "data" / "postmaster.pid",
    }[name]


def log_file(name: str) -> Path:
    """Main log of NAME, named in every failure message."""
    return {
        "kafka": _dir("kafka") / "logs" / "server.log",
        "redis": _dir("redis") / "redis.log",
        "postgres": _dir("postgres") / "postgres.log",
    }[name]


def _log_hint(name: str) -> str:
    hint = str(log_file(name))
    return f"{hint} and {_dir('kafka') / 'logs' / 'kafka.out'}" if name == "kafka" else hint


# --- probes: does a real server answer? ------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _port_open(port_: int) -> bool:
    try:
        with socket.create_connection((HOST, port_), timeout=1):
            return True
    except OSError:
        return False


def _kafka_ready(port_: int) -> bool:
    """A Metadata (v4) request lists a live broker: only then can clients create topics and produce."""
    client_id = b"finpulse-services"
    request = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 12 <= size <= 1 << 20:
                return False
            correlation_id, _throttle_ms, brokers = struct.unpack(">iii", _recv_exact(sock, 12))
    except OSError:
        return False
    return bool(correlation_id == 1 and brokers > 0)


def _redis_ready(port_: int) -> bool:
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _postgres_ready(port_: int) -> bool:
    """Like pg_isready: any answer to a startup packet except 'starting up' (57P03) means ready."""
    params = f"user\0{DB_USER}\0database\0{DB_NAME}\0\0".encode()
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(struct.pack(">ii", 8 + len(params), 196608) + params)
            kind, size = struct.unpack(">ci", _recv_exact(sock, 5))
            payload = _recv_exact(sock, min(max(size - 4, 0), 4096))
            if kind == b"R":
                sock.sendall(b"X\0\0\0\4")  # Terminate, so the server logs no broken connection
    except OSError:
        return False
    return kind == b"R" or (kind == b"E" and b"C57P03\0" not in payload)


_PROBES: dict[str, Callable[[int], bool]] = {
    "kafka": _kafka_ready,
    "redis": _redis_ready,
    "postgres": _postgres_ready,
}


def is_running(name: str) -> bool:
    """True when a server answers real protocol requests on NAME's port, ours or not."""
    return _PROBES[name](port(name))


# --- processes ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (Kafka started in this process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_pid(name: str) -> int | None:
    """PID of the server this script started for NAME, if it is still alive."""
    try:
        pid = int(_pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the PID file
    return pid if _CMDLINE_MARKS[name] in cmdline else None


def is_ours(name: str) -> bool:
    """True when NAME runs from a PID file under the services dir, i.e. `down` will stop it."""
    return _our_pid(name) is not None


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _terminate(name: str, pid: int, ask: Callable[[], None]) -> None:
    """Ask the server to exit, give it STOP_GRACE seconds, then SIGKILL it."""
    ask()
    if not _wait_gone(pid, STOP_GRACE):
        _say(f"{name}: still running after {STOP_GRACE:.0f} s, sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


def _run(cmd: list[str], what: str, quiet: bool = True, **kwargs: Any) -> str:
    """Run a setup command; on failure raise with its output so the user sees why."""
    output = subprocess.PIPE if quiet else sys.stderr
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=output, stderr=output, text=True, check=False, **kwargs
    )
    if result.returncode != 0:
        details = ((result.stdout or "") + (result.stderr or "")).strip()[-3000:]
        raise ServiceError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{details}".rstrip())
    return result.stdout or ""


# --- binaries ------------------------------------------------------------------------------------


@functools.cache
def _apt_update() -> None:
    _run(["apt-get", "update"], "apt-get update", quiet=False)


def _install(package: str) -> None:
    """Install a missing Debian package when root on an apt system; otherwise say what to install."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(f"{package} is not installed; install it (Debian/Ubuntu: sudo apt-get install -y {package})")
    _say(f"installing {package} with apt-get...")
    _apt_update()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    _run(install, f"apt-get install {package}", quiet=False, env=env)


def _ensure(find: Callable[[], str | None], package: str) -> str:
    """Locate a tool, installing its package first when it is missing."""
    found = find()
    if found is None:
        _install(package)
        found = find()
    if found is None:
        raise ServiceError(f"{package} was installed but its programs are still not found")
    return found


def _postgres_bin_dir() -> str | None:
    """Newest /usr/lib/postgresql/N/bin (Debian keeps initdb and pg_ctl off PATH), else PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return str(found[-1].parent)
    on_path = shutil.which("pg_ctl")
    return str(Path(on_path).parent) if on_path else None


# --- Kafka ---------------------------------------------------------------------------------------


def _kafka_libs() -> Path:
    """Broker jars, resolved once from Maven Central into the services dir."""
    libs = _dir("kafka") / "libs"
    if libs.is_dir() and any(libs.iterdir()):
        return libs
    mvn = _ensure(lambda: shutil.which("mvn"), "maven")
    staging = libs.with_name("libs.partial")  # renamed only when complete, so a failed run is retried
    shutil.rmtree(staging, ignore_errors=True)
    _say("kafka: resolving jars with Maven (first run only)...")
    _run(
        [mvn, "-q", "-B", "-f", str(_OPS_DIR / "kafka" / "pom.xml"), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
        "kafka: Maven jar resolution",
    )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def _java(main_class: str, *args: str) -> list[str]:
    java = _ensure(lambda: shutil.which("java"), "default-jre-headless")
    config = _dir("kafka") / "log4j2.properties"
    return [java, "-Xmx768m", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={config}",
            "-cp", f"{_kafka_libs()}/*", main_class, *args]


def _cluster_id() -> str:
    """A Kafka Uuid (URL-safe base64, no padding); one starting with '-' would parse as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _write_kafka_config() -> Path:
    """(Re)write the broker and logging config, so changed ports take effect on every start."""
    kafka_dir = _dir("kafka")
    (kafka_dir / "logs").mkdir(parents=True, exist_ok=True)
    (kafka_dir / "log4j2.properties").write_text(_LOG4J2.format(log=log_file("kafka")))
    properties = kafka_dir / "server.properties"
    properties.write_text(_KAFKA_PROPERTIES.format(
        host=HOST, port=port("kafka"), controller_port=port("kafka-controller"), data=kafka_dir / "data"))
    return properties


def _launch_kafka(timeout: float) -> None:
    """Format storage once, then start the KRaft broker+controller detached; readiness is polled."""
    properties = _write_kafka_config()
    command = _java("kafka.Kafka", str(properties))
    if not (_dir("kafka") / "data" / "meta.properties").exists():
        _say("kafka: formatting storage (first run only)...")
        _run(_java("kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(properties)),
             "kafka: storage format")
    with open(_dir("kafka") / "logs" / "kafka.out", "ab") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=_dir("kafka"), start_new_session=True)
    _pid_file("kafka").write_text(f"{process.pid}\n")


def _stop_kafka(pid: int) -> None:
    _terminate("kafka", pid, lambda: os.kill(pid, signal.SIGTERM))
    _pid_file("kafka").unlink(missing_ok=True)


# --- Redis ---------------------------------------------------------------------------------------


def _launch_redis(timeout: float) -> None:
    """redis-server daemonizes itself; no persistence, since Redis only holds rebuildable state."""
    server = _ensure(lambda: shutil.which("redis-server"), "redis-server")
    (_dir("redis") / "data").mkdir(parents=True, exist_ok=True)
    _run(
        [server, "--port", str(port("redis")), "--bind", HOST, "--daemonize", "yes",
         "--dir", str(_dir("redis") / "data"), "--pidfile", str(_pid_file("redis")),
         "--logfile", str(log_file("redis")), "--save", "", "--appendonly", "no"],
        f"redis: start (log: {log_file('redis')})",
        start_new_session=True,
    )


def _redis_shutdown() -> None:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port("redis")), timeout=2) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        sock.recv(64)  # the server closes the connection once it exits


def _stop_redis(pid: int) -> None:
    _terminate("redis", pid, _redis_shutdown)


# --- PostgreSQL ----------------------------------------------------------------------------------


def _pg(tool: str, *args: str, what: str) -> str:
    """Run a PostgreSQL program; initdb and pg_ctl refuse root, so root runs them as 'postgres'."""
    command = [str(Path(_ensure(_postgres_bin_dir, "postgresql")) / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return _run(command, what, cwd=_dir("postgres"))


def _hand_to_postgres_user() -> None:
    """As root, give the postgres dir to the postgres user and check it can reach it."""
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root needs a 'postgres' system user (package postgresql creates it)") from None
    root = services_dir()
    root.chmod(root.stat().st_mode | 0o111)  # others may traverse (not list) the services dir
    if _dir("postgres").stat().st_uid != owner.pw_uid:
        _run(["chown", "-R", "postgres:postgres", str(_dir("postgres"))], "postgres: chown data dir")
    reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(_dir("postgres"))], check=False)
    if reachable.returncode != 0:
        raise ServiceError(f"the postgres user cannot reach {_dir('postgres')}; "
                           "set FINPULSE_SERVICES_DIR to a directory every user can traverse (e.g. /var/tmp/finpulse)")


def _launch_postgres(timeout: float) -> None:
    """initdb once (trust auth, superuser finpulse), start with pg_ctl -w, create the database."""
    data = _dir("postgres") / "data"
    (_dir("postgres") / "run").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _hand_to_postgres_user()
    if not (data / "PG_VERSION").exists():
        _say("postgres: initialising cluster (first run only)...")
        _pg("initdb", "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
            what="postgres: initdb")
    options = f"-p {port('postgres')} -c listen_addresses={HOST} -k {shlex.quote(str(_dir('postgres') / 'run'))}"
    _pg("pg_ctl", "start", "-w", "-t", str(max(int(timeout), 1)), "-D", str(data), "-l", str(log_file("postgres")),
        "-o", options, what=f"postgres: pg_ctl start (log: {log_file('postgres')})")
    _create_database()


def _create_database() -> None:
    connect = ["-h", HOST, "-p", str(port("postgres")), "-U", DB_USER]
    exists = _pg("psql", "-X", *connect, "-d", "postgres", "-tAc",
                 f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'", what="postgres: database lookup")
    if exists.strip() != "1":
        _pg("createdb", *connect, DB_NAME, what=f"postgres: createdb {DB_NAME}")
        _say(f"postgres: created database {DB_NAME}")


def _stop_postgres(pid: int) -> None:
    """Fast shutdown (rolls back open transactions); immediate if that does not finish in time."""
    data = str(_dir("postgres") / "data")
    try:
        _pg("pg_ctl", "stop", "-m", "fast", "-w", "-t", str(int(STOP_GRACE)), "-D", data, what="postgres: pg_ctl stop")
    except ServiceError:
        _say(f"postgres: fast shutdown did not finish in {STOP_GRACE:.0f} s, using immediate")
        _pg("pg_ctl", "stop", "-m", "immediate", "-w", "-D", data, what="postgres: pg_ctl stop -m immediate")
    _wait_gone(pid, 10)


_LAUNCHERS: dict[str, Callable[[float], None]] = {
    "kafka": _launch_kafka,
    "redis": _launch_redis,
    "postgres": _launch_postgres,
}
_STOPPERS: dict[str, Callable[[int], None]] = {
    "kafka": _stop_kafka,
    "redis": _stop_redis,
    "postgres": _stop_postgres,
}


# --- lifecycle ---------------------------------------------------------------------------------


def _check_names(names: Iterable[str] | None) -> list[str]:
    chosen = list(names) if names else list(SERVICES)
    unknown = [name for name in chosen if name not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    return [name for name in SERVICES if name in chosen]


def _begin(name: str, timeout: float) -> str:
    """Launch NAME unless something answers already: 'reused', 'booting' (ours, not ready yet) or 'started'."""
    port_ = port(name)
    if _PROBES[name](port_):
        return "reused"
    if is_ours(name):
        return "booting"
    if _port_open(port_):
        raise ServiceError(f"{name}: {HOST}:{port_} is taken by something that does not answer like {name}; "
                           f"free the port or set {_PORTS[name][0]}")
    services_dir().mkdir(parents=True, exist_ok=True)
    _dir(name).mkdir(exist_ok=True)
    _say(f"{name}: starting on {HOST}:{port_} (log: {log_file(name)})")
    _LAUNCHERS[name](timeout)
    return "started"


def _wait_ready(name: str, started_at: float, timeout: float) -> None:
    """Poll the protocol probe; fail fast if our process died (after a short grace for daemonizing)."""
    while not _PROBES[name](port(name)):
        waited = time.monotonic() - started_at
        if waited > 5 and not is_ours(name):
            raise ServiceError(f"{name}: the server exited during startup; see {_log_hint(name)}")
        if waited > timeout:
            raise ServiceError(f"{name}: not ready on {HOST}:{port(name)} after {timeout:.0f} s; see {_log_hint(name)}")
        time.sleep(0.5)


def up(names: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """Make the services (default: all) ready; returns NAME -> 'reused' or 'started'."""
    chosen = _check_names(names)
    begun: dict[str, tuple[str, float]] = {}
    for name in chosen:
        begun[name] = (_begin(name, timeout), time.monotonic())
    for name, (how, started_at) in begun.items():
        if how != "reused":
            _wait_ready(name, started_at, timeout)
        owner = "ours" if is_ours(name) else "external"
        verb = "ready" if how == "started" else f"reused ({owner})"
        _say(f"{name}: {verb} on {HOST}:{port(name)}")
    return {name: "started" if how == "started" else "reused" for name, (how, _) in begun.items()}


def start(name: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Start one service unless it already answers; returns 'reused' or 'started'."""
    return up([name], timeout)[name]


def stop(name: str) -> bool:
    """Stop NAME if this script started it (False if it was not running); never touches others' servers."""
    _check_names([name])
    pid = _our_pid(name)
    if pid is None:
        if is_running(name):
            raise ServiceError(f"{name}: the server on {HOST}:{port(name)} was not started by finpulse services; "
                               "stop it where it was started")
        _say(f"{name}: not running")
        return False
    _say(f"{name}: stopping (pid {pid})...")
    _STOPPERS[name](pid)
    _say(f"{name}: stopped")
    return True


def restart(name: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Stop and start one of our services, e.g. to test reconnects; returns 'started'."""
    stop(name)
    return start(name, timeout)


def down() -> None:
    """Stop every service this script started; reused external servers keep running."""
    for name in reversed(SERVICES):
        if is_ours(name):
            stop(name)
        elif is_running(name):
            _say(f"{name}: left running (not started by finpulse services)")


def status() -> list[dict[str, object]]:
    """One record per service: name, port, running, ours, url."""
    return [
        {"name": name, "port": port(name), "running": is_running(name), "ours": is_ours(name), "url": url(name)}
        for name in SERVICES
    ]


def _print_status() -> None:
    for row in status():
        state = "running" if row["running"] else "stopped"
        owner = "ours" if row["ours"] else ("external" if row["running"] else "-")
        print(f"{row['name']:<9} {HOST}:{row['port']:<6} {state:<8} {owner:<9} {row['url']}")


# --- command line ------------------------------------------------------------------------------


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
        elif args.command == "start":
            start(args.name, args.timeout)
        elif args.command == "restart":
            restart(args.name, args.timeout)
        else:
            stop(args.name)
    except ServiceError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
