"""Redis from the machine's redis-server, without persistence: it only holds state the worker can rebuild.

It takes a password (`requirepass`, from the credentials file), given in an owner-only config
file rather than on the command line, where any local user could read it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket

from ops.services import process
from ops.services.config import HOST, credentials, dir_of, log_file, pid_file, port, write_private

CMDLINE_MARK = b"redis-server"

_CONFIG = """\
port {port}
bind {host}
daemonize yes
dir "{data}"
pidfile "{pid}"
logfile "{log}"
save ""
appendonly no
requirepass "{password}"
"""


def _ping(port_: int) -> bytes:
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def ready(port_: int) -> bool:
    """A PONG, or a refusal for want of a password (NOAUTH): either way Redis answers, so no password is needed here."""
    return _ping(port_).startswith((b"+PONG", b"-NOAUTH"))


def outdated() -> bool:
    """Ours, but started before passwords: it answers PING without one."""
    return _ping(port("redis")).startswith(b"+PONG")


def launch(timeout: float) -> None:
    """redis-server daemonizes itself; no persistence, since Redis only holds rebuildable state."""
    server = process.ensure(lambda: shutil.which("redis-server"), "redis-server")
    (dir_of("redis") / "data").mkdir(parents=True, exist_ok=True)
    config = dir_of("redis") / "redis.conf"
    write_private(config, _CONFIG.format(
        port=port("redis"), host=HOST, data=dir_of("redis") / "data", pid=pid_file("redis"), log=log_file("redis"),
        password=credentials()["redis"]))
    process.run([server, str(config)], f"redis: start (log: {log_file('redis')})", start_new_session=True)


def _shutdown() -> None:
    """AUTH, then SHUTDOWN; a server without a password refuses the AUTH but still shuts down."""
    auth = credentials().get("redis", "").encode()
    request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(auth), auth) + b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n"
    with contextlib.suppress(OSError), socket.create_connection((HOST, port("redis")), timeout=2) as sock:
        sock.sendall(request)
        while sock.recv(64):  # the server closes the connection once it exits
            pass


def stop(pid: int) -> None:
    process.terminate("redis", pid, _shutdown)
