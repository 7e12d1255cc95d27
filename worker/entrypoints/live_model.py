"""Which model a worker scores with: the registry's live version, followed without a restart.

The registry (`model_versions`, worker/store/models.py) names the live version and its
checkpoint directory; `finpulse promote` moves it in one transaction. A worker reads it
at start (`registered_live_dir`) and polls it every `FINPULSE_MODEL_POLL_S`
(`LiveModel.run`, a Faust task). When it changes, the new checkpoint loads in a thread of
its own while the old engine keeps serving and /health stays ready; only a loaded engine
that answers a health check and serves the registered version replaces `LiveModel.engine`.
The score agent takes `LiveModel.engine` at the start of each batch, so a batch is scored
by one version from its first text to its last, and the cache keys (which hold the
version) follow by themselves. A checkpoint that fails to load is retried with back-off,
and the worker keeps scoring with the version it has, saying so in the log and in
`finpulse_model_info`.

On a store with no live version yet, the first worker registers its own
(`FINPULSE_MODEL_DIR`) as live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engines import Engine, load_engine
from worker import metrics
from worker.backoff import Backoff
from worker.logfilter import Throttle
from worker.settings import EngineSettings, Settings
from worker.store.database import make_engine
from worker.store.models import ModelRegistry

log = logging.getLogger(__name__)
unreachable = logging.getLogger(f"{__name__}.registry")
unreachable.addFilter(Throttle(every_s=30))  # an unreachable store fails every poll: say so twice a minute
STARTUP_TIMEOUT_S = 10.0


def shared_path(model_dir: str) -> str:
    """What the registry stores: an absolute path when the directory is here (a hub id stays as it is)."""
    path = Path(model_dir)
    return str(path.resolve()) if path.exists() else model_dir


def load_configured(settings: EngineSettings, model_dir: str) -> Engine:
    """A checkpoint with the worker's backend and limits, after one forward pass."""
    engine = load_engine(
        model_dir, settings.backend, max_length=settings.max_length, token_budget=settings.token_budget,
        threads=settings.threads, max_chunks=settings.max_chunks,
    )
    engine.health()
    return engine


def registered_live_dir(settings: Settings) -> str | None:
    """The live version's checkpoint directory, or None when none is registered or the store does not answer."""

    async def read() -> str | None:
        database = make_engine(settings.store.url)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                live = await ModelRegistry(database).live()
        finally:
            await database.dispose()
        return live.model_dir if live else None

    try:
        return asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - the worker starts anyway; LiveModel catches up once the store answers
        log.warning("model registry unreadable at start (%s: %s); starting with FINPULSE_MODEL_DIR"
                    " (run `finpulse db upgrade` if the table is missing)", type(exc).__name__, str(exc)[:200])
        return None


def publish(engine: Engine) -> None:
    metrics.MODEL_INFO.clear()
    metrics.MODEL_INFO.labels(engine.model_version, engine.backend).set(1)


class LiveModel:
    """The engine to score the next batch with; `run` keeps it on the registry's live version."""

    def __init__(self, engine: Engine, model_dir: str, settings: EngineSettings, database_url: str) -> None:
        self.engine = engine
        self.model_dir = shared_path(model_dir)
        self.settings = settings
        self.database_url = database_url
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._backoff = Backoff(5.0, 300.0)
        self._failures = 0
        self._retry_at = 0.0
        publish(engine)

    async def run(self) -> None:
        """Poll the registry until cancelled."""
        database = make_engine(self.database_url)
        try:
            registry = ModelRegistry(database)
            while True:
                await self.follow(registry)
                await asyncio.sleep(self.settings.model_poll_s)
        finally:
            self._loader.shutdown(wait=False, cancel_futures=True)
            await asyncio.shield(database.dispose())

    async def follow(self, registry: ModelRegistry) -> None:
        """One poll: register this worker's version when none is live; load and swap in a newly promoted one."""
        current = self.engine
        try:
            live = await registry.live() or await registry.ensure_live(current.model_version, self.model_dir)
        except Exception as exc:  # noqa: BLE001 - keep scoring with what we have; the next poll tries again
            unreachable.warning("model registry unreadable (%s: %s); still scoring with %s", type(exc).__name__,
                        str(exc)[:200], current.model_version)
            return
        if live.model_version == current.model_version or time.monotonic() < self._retry_at:
            return
        log.info("model %s promoted (%s): loading it while %s serves", live.model_version, live.model_dir,
                 current.model_version)
        started = time.monotonic()
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                self._loader, load_configured, self.settings, live.model_dir
            )
            if loaded.model_version != live.model_version:
                raise ValueError(f"{live.model_dir} serves {loaded.model_version} on {loaded.backend}, not"
                                 f" {live.model_version} (the same FINPULSE_BACKEND everywhere?)")
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint must not stop the worker
            delay = self._backoff.delay(self._failures)
            self._failures += 1
            self._retry_at = time.monotonic() + delay
            log.error("cannot load the live model %s (%s: %s); still scoring with %s, retrying in %.0f s",
                      live.model_version, type(exc).__name__, str(exc)[:300], current.model_version, delay)
            return
        self._failures, self._retry_at = 0, 0.0
        self.engine, self.model_dir = loaded, live.model_dir
        publish(loaded)
        log.warning("live model %s -> %s on %s (loaded in %.1f s): scoring with it from the next batch",
                    current.model_version, loaded.model_version, loaded.backend, time.monotonic() - started)
