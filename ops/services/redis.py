"""Redis from the machine's redis-server, without persistence: it only holds state the worker can rebuild."""

from __future__ import annotations

import contextlib
import shutil
import socket

from ops.services import process
from ops.services.config import HOST, dir_of, log_file, pid_file, port

CMDLINE_MARK = b"redis-server"


def ready(port_: int) -> bool:
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def launch(timeout: float) -> None:
    """redis-server daemonizes itself; no persistence, since Redis only holds rebuildable state."""
    server = process.ensure(lambda: shutil.which("redis-server"), "redis-server")
    (dir_of("redis") / "data").mkdir(parents=True, exist_ok=True)
    process.run(
        [server, "--port", str(port("redis")), "--bind", HOST, "--daemonize", "yes",
         "--dir", str(dir_of("redis") / "data"), "--pidfile", str(pid_file("redis")),
         "--logfile", str(log_file("redis")), "--save", "", "--appendonly", "no"],
        f"redis: start (log: {log_file('redis')})",
        start_new_session=True,
    )


def _shutdown() -> None:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port("redis")), timeout=2) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        sock.recv(64)  # the server closes the connection once it exits


def stop(pid: int) -> None:
    process.terminate("redis", pid, _shutdown)
