"""Bringing the servers up and down: reuse what answers, launch what does not, stop only our own.

This is the policy layer over the three server modules: it decides per service whether to
reuse, launch or wait, and refuses to touch a server that finpulse did not start. It also
makes the passwords (once) and keeps the services dir owner-only: 0711 at the top, so the
postgres user can reach its own directory when we run as root, and 0700 below.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import ModuleType

from ops.services import kafka, postgres, process, redis
from ops.services.config import (
    DEFAULT_TIMEOUT,
    HOST,
    PORTS,
    SERVICES,
    ServiceError,
    dir_of,
    ensure_credentials,
    log_file,
    log_hint,
    pid_file,
    port,
    say,
    services_dir,
    url,
)

# Each has ready(port), outdated(), launch(timeout), stop(pid) and CMDLINE_MARK; Kafka also after_ready().
_SERVERS: dict[str, ModuleType] = {"kafka": kafka, "redis": redis, "postgres": postgres}


def is_running(name: str) -> bool:
    """True when a server answers real protocol requests on NAME's port, ours or not."""
    return bool(_SERVERS[name].ready(port(name)))


def _our_pid(name: str) -> int | None:
    """PID of the server this script started for NAME, if it is still alive."""
    return process.pid_from_file(pid_file(name), _SERVERS[name].CMDLINE_MARK)


def is_ours(name: str) -> bool:
    """True when NAME runs from a PID file under the services dir, i.e. `down` will stop it."""
    return _our_pid(name) is not None


def _check_names(names: Iterable[str] | None) -> list[str]:
    chosen = list(names) if names else list(SERVICES)
    unknown = [name for name in chosen if name not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    return [name for name in SERVICES if name in chosen]


def _begin(name: str, timeout: float) -> str:
    """Launch NAME unless something answers already: 'reused', 'booting' (ours, not ready yet) or 'started'."""
    port_ = port(name)
    if _SERVERS[name].ready(port_):
        if not (is_ours(name) and _SERVERS[name].outdated()):
            return "reused"
        say(f"{name}: ours but started without passwords or TLS; restarting it with them")
        stop(name)
    elif is_ours(name):
        return "booting"
    elif process.port_open(port_):
        raise ServiceError(f"{name}: {HOST}:{port_} is taken by something that does not answer like {name}; "
                           f"free the port or set {PORTS[name][0]}")
    say(f"{name}: starting on {HOST}:{port_} (log: {log_file(name)})")
    _SERVERS[name].launch(timeout)
    return "started"


def _wait_ready(name: str, started_at: float, timeout: float) -> None:
    """Poll the protocol probe; fail fast if our process died (after a short grace for daemonizing)."""
    while not _SERVERS[name].ready(port(name)):
        waited = time.monotonic() - started_at
        if waited > 5 and not is_ours(name):
            raise ServiceError(f"{name}: the server exited during startup; see {log_hint(name)}")
        if waited > timeout:
            raise ServiceError(f"{name}: not ready on {HOST}:{port(name)} after {timeout:.0f} s; see {log_hint(name)}")
        time.sleep(0.5)


def up(names: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """Make the services (default: all) ready; returns NAME -> 'reused' or 'started'."""
    chosen = _check_names(names)
    _make_private(chosen)
    ensure_credentials()
    begun: dict[str, tuple[str, float]] = {}
    for name in chosen:
        begun[name] = (_begin(name, timeout), time.monotonic())
    for name, (how, started_at) in begun.items():
        if how != "reused":
            _wait_ready(name, started_at, timeout)
        if hasattr(_SERVERS[name], "after_ready") and is_ours(name):  # also if an earlier `up` failed before it
            _SERVERS[name].after_ready()
        owner = "ours" if is_ours(name) else "external"
        verb = "ready" if how == "started" else f"reused ({owner})"
        say(f"{name}: {verb} on {HOST}:{port(name)}")
    return {name: "started" if how == "started" else "reused" for name, (how, _) in begun.items()}


def _make_private(names: list[str]) -> None:
    """Owner-only dirs, also for those made before (0755): others must not read data, logs or the passwords."""
    root = services_dir()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # traversable, not listable: the postgres user needs to reach its dir when we run as root
    for name in names:
        dir_of(name).mkdir(exist_ok=True)
        dir_of(name).chmod(0o700)


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
        say(f"{name}: not running")
        return False
    say(f"{name}: stopping (pid {pid})...")
    _SERVERS[name].stop(pid)
    say(f"{name}: stopped")
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
            say(f"{name}: left running (not started by finpulse services)")


def status() -> list[dict[str, object]]:
    """One record per service: name, port, running, ours, url."""
    return [
        {"name": name, "port": port(name), "running": is_running(name), "ours": is_ours(name), "url": url(name)}
        for name in SERVICES
    ]
