"""The process plumbing every server shares: sockets, PID files, stopping, setup commands, apt.

The per-server modules only say *what* to run and how to ask a server to exit; the
waiting, killing after a grace period and turning failed commands into readable errors is
the same for all three, so it lives here once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.services.config import HOST, STOP_GRACE, ServiceError, say

# --- sockets ---------------------------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def port_open(port_: int) -> bool:
    try:
        with socket.create_connection((HOST, port_), timeout=1):
            return True
    except OSError:
        return False


# --- PIDs ----------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (Kafka started in this process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_from_file(path: Path, cmdline_mark: bytes) -> int | None:
    """PID in PATH if that process is alive and its /proc/PID/cmdline contains CMDLINE_MARK.

    The mark check means a stale PID file whose number was reused by another process is ignored.
    """
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the PID file
    return pid if cmdline_mark in cmdline else None


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def terminate(name: str, pid: int, ask: Callable[[], None]) -> None:
    """Ask the server to exit, give it STOP_GRACE seconds, then SIGKILL it."""
    ask()
    if not wait_gone(pid, STOP_GRACE):
        say(f"{name}: still running after {STOP_GRACE:.0f} s, sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10)


# --- commands and packages -------------------------------------------------------------------------


def run(cmd: list[str], what: str, quiet: bool = True, input: str | None = None, **kwargs: Any) -> str:
    """Run a setup command; on failure raise with its output so the user sees why.

    Secrets go in through INPUT (standard input), never the arguments, which every local user can read in /proc.
    """
    output = subprocess.PIPE if quiet else sys.stderr
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run(cmd, stdout=output, stderr=output, text=True, check=False, **stdin, **kwargs)
    if result.returncode != 0:
        details = ((result.stdout or "") + (result.stderr or "")).strip()[-3000:]
        raise ServiceError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{details}".rstrip())
    return result.stdout or ""


@functools.cache
def _apt_update() -> None:
    run(["apt-get", "update"], "apt-get update", quiet=False)


def _install(package: str) -> None:
    """Install a missing Debian package when root on an apt system; otherwise say what to install."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(f"{package} is not installed; install it (Debian/Ubuntu: sudo apt-get install -y {package})")
    say(f"installing {package} with apt-get...")
    _apt_update()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    run(install, f"apt-get install {package}", quiet=False, env=env)


def ensure(find: Callable[[], str | None], package: str) -> str:
    """Locate a tool, installing its package first when it is missing."""
    found = find()
    if found is None:
        _install(package)
        found = find()
    if found is None:
        raise ServiceError(f"{package} was installed but its programs are still not found")
    return found
