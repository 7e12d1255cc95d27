"""`finpulse bench --pipeline`: what the whole pipeline delivers against what its engine alone could, in one run.

On real services, in a throw-away deployment (worker/entrypoints/bench_deployment.py), it measures
the engine ceiling (the same model, backend and texts, in this process, before the worker starts),
the worker's startup time to a healthy `/health`, docs/s cold (distinct texts, empty cache) and
cached (new ids, same texts), each from the first send to the last row stored, then the latency
of each document (Kafka timestamp to `scored_at` and to `stored_at`) at a steady rate of half the
cold rate, after emptying the cache, and the worker's peak memory. The worker's own counters
(engine time, batches, cache hits) come with each phase, to show where the time went.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
from aiokafka import AIOKafkaProducer
from rich.progress import Progress, TaskID
from rich.table import Table

from worker.entrypoints.bench_deployment import Deployment, service_environment, shown_settings
from worker.kafka_security import client_options
from worker.samples import sample_items
from worker.settings import Settings
from worker.stages.decode import Rejection, decode_news_item
from worker.topics import bootstrap_servers

WARM_UP_DOCS = 32  # enough for the consumer to have its partitions and the model its first batches
# The end of a phase is the poll that finds its last row: every 50 ms, or 0.5 % of the phase so far when longer,
# so the count query's own load on the database stays small in long phases.
POLL_S, POLL_SHARE, POLL_MAX_S = 0.05, 0.005, 0.5
# The worker's counters reported per phase (deltas), by their Prometheus sample names.
COUNTERS = {
    "engine_texts": "finpulse_engine_texts_total",
    "engine_batches": "finpulse_engine_batches_total",
    "engine_seconds": "finpulse_engine_batch_seconds_sum",
    "cache_hits": "finpulse_cache_hits_total",
    "cache_misses": "finpulse_cache_misses_total",
    "dlq": "finpulse_dlq_total",
}


def warm_up_items() -> list[dict[str, str]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in sample_items(WARM_UP_DOCS, prefix="warmup")]


def load_items(data: Path, n: int, max_text_chars: int) -> list[dict[str, str]]:
    """The first n items of DATA the worker accepts whose normalised texts are distinct (and not a warm-up
    text), as `text` plus `lang` and `source` where given: ids are the bench's, and no `published_at`,
    so the event time is the Kafka timestamp."""
    warm_up = [json.dumps(item).encode() for item in warm_up_items()]
    seen = {item.text for item in (decode_news_item(raw, max_text_chars=max_text_chars) for raw in warm_up)
            if not isinstance(item, Rejection)}
    items = []
    for line in data.read_bytes().splitlines():
        item = decode_news_item(line, max_text_chars=max_text_chars)
        if isinstance(item, Rejection) or item.text in seen:
            continue
        seen.add(item.text)
        fields = {"text": item.text, "lang": item.lang, "source": item.source if item.source != "unknown" else None}
        items.append({k: v for k, v in fields.items() if v is not None})
        if len(items) == n:
            break
    return items


def engine_ceiling(settings: Settings, texts: list[str], repeats: int, workers: int = 1) -> dict[str, object]:
    """docs/s of the worker's model and backend alone on TEXTS (median of REPEATS after a warm-up), with the
    threads of all WORKERS together: what the machine's share of the deployment could score at best."""
    from engines import load_engine

    cfg = settings.engine
    threads = cfg.threads * workers if cfg.threads else None
    engine = load_engine(cfg.model_dir, cfg.backend, max_length=cfg.max_length, token_budget=cfg.token_budget,
                         threads=threads, max_chunks=cfg.max_chunks)
    engine.predict(texts[:64])
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.predict(texts)
        runs.append(time.perf_counter() - started)
    figures = {"backend": engine.backend, "model_version": engine.model_version, "threads": threads,
               "seconds": statistics.median(runs), "docs_per_s": len(texts) / statistics.median(runs)}
    del engine
    gc.collect()  # the worker should not find this process still holding a model's worth of memory
    return figures


def cpu() -> dict[str, object]:
    """What the figures ran on; /proc/cpuinfo's first processor where there is one."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return {
        "model": fields.get("model name") or platform.processor(),
        "flags": fields.get("flags", "").split(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def cpu_seconds(worker_pids: list[int]) -> dict[str, float]:
    """CPU time (user + system) so far of the workers (together), this bench process, and the services' processes by
    kind (Kafka's JVM, every PostgreSQL and Redis process): per phase, the deltas say where the time goes.
    Processes of other users of the same services count too; the bench says so beside the figures."""
    totals = {"worker": 0.0, "bench": 0.0, "kafka": 0.0, "postgres": 0.0, "redis": 0.0}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = proc.info
        times = info["cpu_times"]
        if times is None:
            continue
        name = info["name"] or ""
        if info["pid"] in worker_pids:
            kind = "worker"
        elif info["pid"] == os.getpid():
            kind = "bench"
        elif name == "java" and any("kafka" in part for part in info["cmdline"] or ()):
            kind = "kafka"
        elif name.startswith("postgres"):
            kind = "postgres"
        elif name.startswith("redis-server"):
            kind = "redis"
        else:
            continue
        totals[kind] += times.user + times.system
    return totals


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


class Phases:
    """Sends documents to the deployment and waits for their rows, timing each phase."""

    def __init__(self, deployment: Deployment, conn: asyncpg.Connection, producer: AIOKafkaProducer,
                 progress: Progress, timeout_s: float) -> None:
        self.deployment = deployment
        self.conn = conn
        self.producer = producer
        self.progress = progress
        self.timeout_s = timeout_s
        self.topic = deployment.settings.topic("docs")

    async def run(self, name: str, items: list[dict[str, str]], rate: float | None = None) -> dict[str, object]:
        """Send ITEMS with ids `<name>-<i>` (as fast as the producer can, or at RATE docs/s) and wait until
        all are stored; docs_per_s runs from the first send to the poll that found the last row."""
        messages = [(f"{name}-{i}", json.dumps({"id": f"{name}-{i}", **item}, ensure_ascii=False).encode())
                    for i, item in enumerate(items)]
        before = self.deployment.metrics()
        cpu_before = cpu_seconds(self.deployment.worker_pids)
        task = self.progress.add_task(f"{name}: stored", total=len(messages))
        started = time.perf_counter()
        sending = asyncio.create_task(self._send(messages, rate, started))
        try:
            stored = await self._wait_stored(name, len(messages), task, sending)
            seconds = time.perf_counter() - started
            send_seconds = await sending
        finally:
            sending.cancel()  # after a failure or Ctrl-C: stop sending before the producer closes
        after = self.deployment.metrics()
        cpu_after = cpu_seconds(self.deployment.worker_pids)
        self.progress.remove_task(task)
        return {
            "docs": len(messages),
            "seconds": seconds,
            "docs_per_s": stored / seconds,
            "send_seconds": send_seconds,
            "sent_docs_per_s": len(messages) / send_seconds,
            "worker": {key: after.get(metric, 0.0) - before.get(metric, 0.0) for key, metric in COUNTERS.items()},
            # CPU ms per stored document, by process kind: what each part of the pipeline costs.
            "cpu_ms_per_doc": {kind: (cpu_after[kind] - cpu_before[kind]) * 1000 / max(stored, 1) for kind in cpu_after},
        }

    async def _send(self, messages: list[tuple[str, bytes]], rate: float | None, started: float) -> float:
        for i, (key, value) in enumerate(messages):
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.producer.send(self.topic, value=value, key=key.encode())
        await self.producer.flush()
        return time.perf_counter() - started

    async def _wait_stored(self, name: str, expected: int, task: TaskID, sending: asyncio.Task[float]) -> int:
        started = time.perf_counter()
        deadline = started + self.timeout_s
        while True:
            stored = int(await self.conn.fetchval("SELECT count(*) FROM documents WHERE doc_id LIKE $1", f"{name}-%"))
            self.progress.update(task, completed=stored)
            if stored >= expected:
                return stored
            if sending.done() and sending.exception() is not None:
                await sending  # raises the producer's error
            if time.perf_counter() > deadline:
                dlq = self.deployment.metrics().get(COUNTERS["dlq"], 0.0)
                raise RuntimeError(f"{name}: {stored} of {expected} documents stored after {self.timeout_s:.0f} s "
                                   f"({dlq:.0f} dead-lettered); worker log:\n{self.deployment.log_tail()}")
            self.deployment.check_running()
            await asyncio.sleep(min(POLL_MAX_S, max(POLL_S, (time.perf_counter() - started) * POLL_SHARE)))

    async def latencies(self, name: str) -> dict[str, float]:
        """Percentiles of each document's Kafka timestamp to its scored_at and to its stored_at, in ms."""
        rows = await self.conn.fetch(
            "SELECT extract(epoch FROM stored_at - event_time) * 1000 AS stored,"
            " extract(epoch FROM scored_at - event_time) * 1000 AS scored FROM documents WHERE doc_id LIKE $1",
            f"{name}-%",
        )
        figures = {}
        for column in ("stored", "scored"):
            for key, value in percentiles([float(row[column]) for row in rows]).items():
                figures[f"{key}_{column}_ms"] = value
        return figures


async def _measure(deployment: Deployment, items: list[dict[str, str]], progress: Progress,
                   say: Callable[[str], None], rate: float | None, latency_s: float, timeout_s: float) -> dict[str, object]:
    """Warm-up, cold, cached, then steady: the phases that need the running worker."""
    kafka = deployment.settings.kafka
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(kafka.url), acks="all", linger_ms=0,
                                max_batch_size=256 * 1024, **client_options(kafka))
    conn = await asyncpg.connect(deployment.dsn, timeout=10)
    await producer.start()
    try:
        phases = Phases(deployment, conn, producer, progress, timeout_s)
        warm = await phases.run("warmup", warm_up_items())
        cold = await phases.run("cold", items)
        say(f"cold: {cold['docs_per_s']:.1f} docs/s")
        cached = await phases.run("cached", items)
        say(f"cached: {cached['docs_per_s']:.1f} docs/s")
        steady_rate = rate or float(cold["docs_per_s"]) / 2  # type: ignore[arg-type]
        steady_items = items[:max(2, min(len(items), int(steady_rate * latency_s)))]
        cleared = deployment.clear_cache()  # the same texts are cold again
        say(f"steady: {len(steady_items)} docs at {steady_rate:.1f} docs/s (cache emptied: {cleared} keys)")
        steady = await phases.run("steady", steady_items, rate=steady_rate)
        return {"phases": {"warmup": warm, "cold": cold, "cached": cached, "steady": steady},
                "steady_rate_docs_per_s": steady_rate, "latency_n": len(steady_items),
                **await phases.latencies("steady")}
    finally:
        await producer.stop()
        await conn.close()


def run(model: Path, data: Path, n: int, backend: str | None, repeats: int, rate: float | None, latency_s: float,
        progress: Progress, say: Callable[[str], None], workers: int = 1) -> dict[str, object]:
    """Every figure of one pipeline bench (see the module doc); the deployment is removed whatever happens,
    SIGTERM included."""
    environment = service_environment()
    items = load_items(data, n, Settings.from_env(environment, env_file=None).pipeline.max_text_chars)
    if len(items) < 2:
        raise ValueError(f"the bench needs at least 2 valid distinct texts (--n 2 or more); {data} gave {len(items)}")
    if len(items) < n:
        say(f"[yellow]{data} has only {len(items)} valid distinct texts; measuring those[/yellow]")
    started_at, load_start = datetime.now(UTC), os.getloadavg()
    handle, name = tempfile.mkstemp(prefix="finpulse-bench-worker-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    deployment = Deployment(environment, model, backend, log_path, workers)
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with deployment, progress:
            settings = deployment.settings
            say(f"namespace {settings.namespace}, database {deployment.database}; worker log {log_path}")
            task = progress.add_task("engine alone", total=None)
            ceiling = engine_ceiling(settings, [item["text"] for item in items], repeats, workers)
            progress.remove_task(task)
            say(f"engine alone ({ceiling['backend']}): {ceiling['docs_per_s']:.1f} docs/s")
            startup_s, settled_s = deployment.start_workers(timeout_s=300)
            health = deployment.health() or {}
            who = "worker" if workers == 1 else f"{workers} workers"
            settled = f", group stable after {settled_s:.1f} s" if workers > 1 else ""
            say(f"{who} healthy after {startup_s:.1f} s{settled} ({health.get('backend')}, {health.get('model_version')})")
            # Generous: ten times the engine's time per phase, plus room for the consumer's first join.
            timeout_s = 120 + 10 * len(items) / float(ceiling["docs_per_s"])  # type: ignore[arg-type]
            measured = asyncio.run(_measure(deployment, items, progress, say, rate, latency_s, timeout_s))
            peak_rss_mb = deployment.peak_rss_mb()  # per worker
    finally:
        signal.signal(signal.SIGTERM, previous)
        if deployment.leftovers:
            say(f"[red]could not remove: {'; '.join(deployment.leftovers)}[/red]")
    if (health.get("backend"), health.get("model_version")) != (ceiling["backend"], ceiling["model_version"]):
        say(f"[red]the worker serves {health.get('backend')} {health.get('model_version')}, the engine ceiling "
            f"was {ceiling['backend']} {ceiling['model_version']}[/red]")
    cold, cached = measured["phases"]["cold"], measured["phases"]["cached"]  # type: ignore[index]
    return {
        "n": len(items),
        "data": str(data),
        "model": str(model),
        "backend": health.get("backend"),
        "model_version": health.get("model_version"),
        "engine_backend": ceiling["backend"],
        "engine_docs_per_s": ceiling["docs_per_s"],
        "engine_repeats": repeats,
        "engine_threads": ceiling["threads"],
        "workers": workers,
        "pipeline_docs_per_s": cold["docs_per_s"],
        "cached_docs_per_s": cached["docs_per_s"],
        "pipeline_engine_ratio": cold["docs_per_s"] / ceiling["docs_per_s"],  # type: ignore[operator]
        **measured,
        "startup_s": startup_s,
        "group_settled_s": settled_s,
        "peak_rss_mb": sum(peak_rss_mb) if peak_rss_mb else None,  # all workers together
        "peak_rss_mb_per_worker": peak_rss_mb,
        "namespace": settings.namespace,
        "database": deployment.database,
        "worker_log": str(log_path),
        "settings": shown_settings(settings),
        "cpu": cpu(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "started_at": started_at.isoformat(),
        "python": platform.python_version(),
    }


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, so that the deployment is removed on the way out."""
    raise KeyboardInterrupt


def summary(figures: dict[str, object]) -> Table:
    """The headline figures of a run, as the terminal shows them."""
    workers = figures.get("workers", 1)
    table = Table(title=f"pipeline bench: {figures['n']} docs, {figures['backend']} ({figures['model_version']})"
                  + (f", {workers} workers" if workers != 1 else ""))
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("engine alone, docs/s", f"{figures['engine_docs_per_s']:.1f}"),
        ("pipeline cold, docs/s", f"{figures['pipeline_docs_per_s']:.1f}"),
        ("pipeline / engine", f"{figures['pipeline_engine_ratio']:.2f}"),
        ("pipeline cached, docs/s", f"{figures['cached_docs_per_s']:.1f}"),
        (f"latency at {figures['steady_rate_docs_per_s']:.1f} docs/s: scored p50 / p99, ms",
         f"{figures['p50_scored_ms']:.0f} / {figures['p99_scored_ms']:.0f}"),
        ("stored p50 / p99, ms", f"{figures['p50_stored_ms']:.0f} / {figures['p99_stored_ms']:.0f}"),
        ("startup to healthy, s", f"{figures['startup_s']:.1f}"),
        ("worker peak RSS, MiB", "n/a" if figures["peak_rss_mb"] is None else f"{figures['peak_rss_mb']:.0f}"),
    ]
    phases = figures.get("phases") or {}
    for phase in ("cold", "cached"):
        split = phases.get(phase, {}).get("cpu_ms_per_doc") if isinstance(phases, dict) else None
        if split:
            rows.append((f"CPU ms per doc, {phase}", " ".join(f"{kind} {ms:.2f}" for kind, ms in split.items())))
    for row in rows:
        table.add_row(*row)
    return table
