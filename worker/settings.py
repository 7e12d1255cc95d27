"""Every setting, read from the environment (`FINPULSE_<NAME>`, or a `.env` file) in this one place.

The environment names are flat (`FINPULSE_BATCH_MAX`, `FINPULSE_REDIS_URL`), as operators
write them; the code sees them in sections, one per component (`settings.kafka`,
`settings.store`, `settings.cache`, `settings.engine`, `settings.pipeline`,
`settings.webhooks`, `settings.api`), and hands each component only its own. Each field
says its environment name (`env`), unit and default; `python -m worker.settings`
prints the README's table from them, and a test fails when the README drifts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

PREFIX = "FINPULSE_"


def _list_of_ints(value: Any) -> Any:
    """`60,300,3600` or `[60, 300, 3600]` from the environment; a list from code."""
    if isinstance(value, str):
        value = value.strip()
        return json.loads(value) if value.startswith("[") else [part for part in value.split(",") if part.strip()]
    return value


def _none_if_empty(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _sorted_windows(value: list[int]) -> list[int]:
    if not value or min(value) <= 0 or max(value) > 31 * 86_400:
        raise ValueError(f"needs window sizes between 1 s and 31 days, in seconds, got {value!r}")
    return sorted(set(value))


Windows = Annotated[list[int], BeforeValidator(_list_of_ints), AfterValidator(_sorted_windows)]
OptionalText = Annotated[str | None, BeforeValidator(_none_if_empty)]
OptionalInt = Annotated[int | None, BeforeValidator(_none_if_empty)]


def _names(value: Any) -> Any:
    """`a, b` from the environment (None if empty); a list from code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()] or None
    return value


def _port_ranges(value: list[str]) -> list[str]:
    for part in value:
        low, _, high = part.partition("-")
        if not (low.isdigit() and (high or low).isdigit() and 1 <= int(low) <= int(high or low) <= 65_535):
            raise ValueError(f"needs ports or port ranges within 1-65535 (`443`, `8000-8999`), got {part!r}")
    return value


Names = Annotated[list[str], BeforeValidator(_names)]
OptionalNames = Annotated[list[str] | None, BeforeValidator(_names)]
PortRanges = Annotated[list[str], BeforeValidator(_names), AfterValidator(_port_ranges)]


def env(name: str, default: Any, description: str, **constraints: Any) -> Any:
    """A field set by `FINPULSE_<name>`."""
    return Field(default, description=description, json_schema_extra={"env": PREFIX + name}, **constraints)


LogFormat = Literal["text", "json"]
ProducerCompression = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(Section):
    """The brokers, how every client reaches them (worker/kafka_security.py), and how the worker consumes."""

    url: str = env("KAFKA_URL", "kafka://127.0.0.1:9092", "Brokers, Faust style (`kafka://h1:9092,h2:9092`)")
    topic_partitions: int = env("TOPIC_PARTITIONS", 4, "Partitions of topics the worker creates", ge=1, le=10_000)
    session_timeout_s: float = env(
        "SESSION_TIMEOUT_S", 20.0, "Kafka drops a worker that sent no heartbeat this long; its partitions move on, s",
        ge=6, le=1800,
    )
    rebalance_timeout_s: float = env("REBALANCE_TIMEOUT_S", 30.0, "Time workers get to rejoin the group in a rebalance, s", ge=1, le=3600)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = env(
        "PROCESSING_GUARANTEE", "at_least_once", "Faust guarantee for Kafka outputs; `exactly_once` = Kafka transactions"
    )
    # 128 measured best with the token budget and the 50 ms persist wait (bench --pipeline, starter int8: cold
    # 88.8 / 99.5 / 95.4 docs/s and stored p99 at half rate 504 / 430 / 618 ms for 64 / 128 / 256).
    batch_max: int = env("BATCH_MAX", 128, "Most documents per scoring micro-batch", ge=1, le=4096)
    batch_wait_ms: int = env("BATCH_WAIT_MS", 20, "Longest wait to fill a scoring micro-batch, ms", ge=1, le=60_000)
    # 3 by measurement (bench --pipeline, starter int8, one worker): stored p99 at half rate 121-136 ms against
    # 204-221 with 1, for about 4 % less cold throughput (125-127 against 132 docs/s; docs/performance.md, fifth round).
    score_in_flight: int = env(
        "SCORE_IN_FLIGHT", 3, "Scoring micro-batches worked on at once; those waiting for the model go in together",
        ge=1, le=64,
    )
    fetch_max_wait_ms: int = env(
        "FETCH_MAX_WAIT_MS", 100, "Longest a fetch waits at the broker for new records, ms (Faust's own is 1500)",
        ge=1, le=30_000,
    )
    persist_batch_max: int = env("PERSIST_BATCH_MAX", 500, "Most rows per SQL upsert", ge=1, le=10_000)
    # Faust's take() starts this wait after each batch and ends it when the batch is full: under load the upserts
    # still fill up to PERSIST_BATCH_MAX, so the wait only adds latency below that (200 ms before: most of the
    # time between scored and stored at half rate; 20 against 50 ms here and for BATCH_WAIT_MS: stored p50
    # 184 against 261 ms, cold throughput unchanged, docs/performance.md).
    persist_batch_wait_ms: int = env("PERSIST_BATCH_WAIT_MS", 20, "Longest wait to fill an upsert, ms", ge=1, le=60_000)
    # Outputs (scored items, windows, dead letters) in batches: bench --pipeline measured CPU per stored document
    # with 5 ms and 256 KiB against Faust's 0 ms and 16 KiB: the worker 1.24 -> 0.96 ms, Kafka 0.58 -> 0.18 ms.
    producer_linger_ms: int = env(
        "PRODUCER_LINGER_MS", 5, "How long the worker's producer waits to fill a batch of outputs, ms", ge=0, le=1000
    )
    producer_batch_bytes: int = env(
        "PRODUCER_BATCH_BYTES", 262_144, "Largest batch of outputs per partition in one produce request, bytes",
        ge=1024, le=1_000_000,
    )
    producer_compression: ProducerCompression = env(
        "PRODUCER_COMPRESSION", "none", "Codec of the worker's output batches: none, gzip, snappy, lz4, zstd"
    )
    web_port: int = env("WEB_PORT", 6066, "Port of the worker's `/health` and `/metrics`", ge=0, le=65535)
    web_host: str = env("WEB_HOST", "127.0.0.1", "Interface of the worker's `/health` and `/metrics`")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "How every Kafka client reaches the brokers; production clusters want `SASL_SSL`"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = env(
        "KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", "SASL mechanism of the `SASL_*` protocols (`PLAIN` sends the password itself: TLS)"
    )
    sasl_username: OptionalText = env("KAFKA_SASL_USERNAME", None, "SASL user; the `SASL_*` protocols need one")
    sasl_password: OptionalText = env("KAFKA_SASL_PASSWORD", None, "SASL password", repr=False)
    ssl_cafile: OptionalText = env(
        "KAFKA_SSL_CAFILE", None, "CA certificates (PEM) the brokers' certificates must chain to (default: the system's)"
    )
    ssl_certfile: OptionalText = env("KAFKA_SSL_CERTFILE", None, "Client certificate (PEM), for brokers that require mutual TLS")
    ssl_keyfile: OptionalText = env("KAFKA_SSL_KEYFILE", None, "Private key (PEM) of the client certificate, unless in its file")
    ssl_check_hostname: bool = env("KAFKA_SSL_CHECK_HOSTNAME", True, "Require the broker's certificate to name the host connected to")

    def model_post_init(self, context: Any) -> None:
        """A SASL protocol without a login would fail only at the first connection, and less clearly."""
        if self.security_protocol.startswith("SASL_") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"FINPULSE_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                             "FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD")


class PipelineSettings(Section):
    """What the decode and score stages accept and add."""

    max_text_chars: int = env(
        "MAX_TEXT_CHARS", 100_000,
        "Longer texts go to the DLQ: a hard cap on memory (at most 200,000, so a scored item fits in a Kafka message)",
        ge=1, le=200_000,
    )
    detect_language: bool = env(
        "DETECT_LANGUAGE", True, "Detect the language of items without `lang` (lingua; loads on the first such item)"
    )
    languages: OptionalNames = env(
        "LANGUAGES", None,
        "ISO 639-1 codes detection chooses among (`en,de,ja`): faster and smaller than all 75 (unset)",
    )
    watchlist: OptionalText = env("WATCHLIST", None, "YAML of tickers and their names (default: the bundled example)")


class EngineSettings(Section):
    """The model and the backend that runs it."""

    model_dir: str = env("MODEL_DIR", "models/current", "Checkpoint directory or hub id")
    backend: str = env(
        "BACKEND", "auto",
        "`torch`, `onnxruntime` (fp32 `model.onnx`), `onnxruntime-int8` (`model.int8.onnx`), `tensorrt`;"
        " `auto` = TensorRT on a GPU, else the int8 export, else the fp32 export, else PyTorch",
    )
    max_length: int = env("MAX_LENGTH", 128, "Tokens per model input window", ge=8, le=512)
    max_chunks: int = env(
        "MAX_CHUNKS", 8,
        "Most windows of MAX_LENGTH tokens a long text is scored over (first, then evenly spaced); 1 = its start only",
        ge=1, le=64,
    )
    token_budget: int = env(
        "TOKEN_BUDGET", 512,
        "Padded tokens per engine batch: on 2 CPU cores 512 beat 2048 by 1.1-1.2x and 2048 beat 8192 by 1.35x"
        " (docs/performance.md); GPUs want more",
        ge=8, le=1_048_576,
    )
    threads: OptionalInt = env("ENGINE_THREADS", None, "CPU threads for the engine (default: the runtime's)", ge=1, le=1024)
    model_poll_s: float = env(
        "MODEL_POLL_S", 5.0, "Workers check the store for a promoted live model this often (`finpulse promote`), s", gt=0, le=3600
    )


class CacheSettings(Section):
    """The Redis score cache."""

    url: OptionalText = env("REDIS_URL", "redis://127.0.0.1:6379/0", "Score cache; empty disables it")
    ttl_s: int = env("CACHE_TTL_S", 7 * 24 * 3600, "Lifetime of a cached score, s", ge=1, le=365 * 24 * 3600)
    timeout_s: float = env("CACHE_TIMEOUT_S", 0.5, "Redis socket timeout, s", gt=0, le=60)
    retry_s: float = env("CACHE_RETRY_S", 5.0, "After a Redis failure, score without the cache for up to this long (jittered), s", gt=0, le=3600)


class StoreSettings(Section):
    """The SQL store: documents, aggregates, subscriptions, alerts."""

    url: str = env(
        "DATABASE_URL", "sqlite+aiosqlite:///finpulse.db", "SQL store, async SQLAlchemy URL (`postgresql+asyncpg://…`)"
    )
    windows: Windows = env("WINDOWS", [60, 300, 3600], "Tumbling window sizes of the aggregates, s (`60,300,3600`)")
    retry_initial_s: float = env("STORE_RETRY_INITIAL_S", 0.5, "First back-off after a failed SQL write, s", gt=0, le=3600)
    retry_max_s: float = env("STORE_RETRY_MAX_S", 10.0, "Longest back-off between SQL retries, s", gt=0, le=3600)
    subscriptions_refresh_s: float = env("SUBSCRIPTIONS_REFRESH_S", 2.0, "Workers reload alert subscriptions this often, s", gt=0, le=3600)


class WebhookSettings(Section):
    """The alerts outbox: the alerts topic and signed webhooks."""

    outbox_interval_s: float = env("OUTBOX_INTERVAL_S", 0.5, "How often fired alerts are published and POSTed, s", gt=0, le=3600)
    allow_private: bool = env(
        "WEBHOOK_ALLOW_PRIVATE", False, "Allow webhooks to private, loopback and link-local addresses (SSRF: refused by default)"
    )
    allow_http: bool = env("WEBHOOK_ALLOW_HTTP", False, "Allow plain `http://` webhooks (default: https only)")
    allowed_ports: PortRanges = env(
        "WEBHOOK_ALLOWED_PORTS", ["443", "80"], "Ports a webhook URL may name: ports and ranges (`443,8000-8999`)", min_length=1
    )
    secret_keys: OptionalNames = env(
        "SECRET_KEYS", None,
        "Fernet keys for webhook secrets at rest, comma-separated: the first encrypts, all decrypt"
        " (`finpulse secrets generate-key`); unset = webhooks refused",
    )
    timeout_s: float = env("WEBHOOK_TIMEOUT_S", 5.0, "Timeout of one webhook POST, s", gt=0, le=300)
    max_attempts: int = env("WEBHOOK_MAX_ATTEMPTS", 8, "POSTs per alert before its delivery is marked failed", ge=1, le=100)
    retry_initial_s: float = env("WEBHOOK_RETRY_INITIAL_S", 1.0, "First back-off after a failed POST, s (doubles, jittered)", gt=0, le=86_400)
    retry_max_s: float = env("WEBHOOK_RETRY_MAX_S", 300.0, "Longest back-off between POSTs, s", gt=0, le=7 * 86_400)


class ApiSettings(Section):
    """`finpulse api`."""

    token: OptionalText = env(
        "API_TOKEN", None,
        "Bootstrap bearer token with every scope, at least 32 characters; others come from `finpulse tokens create`",
    )
    host: str = env("API_HOST", "127.0.0.1", "Interface of `finpulse api`")
    port: int = env("API_PORT", 8000, "Port of `finpulse api`", ge=1, le=65535)
    allowed_hosts: Names = env(
        "API_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"],
        "Host headers the API answers (DNS rebinding); `*.example.com` matches subdomains, `*` any host", min_length=1,
    )
    max_body_bytes: int = env("API_MAX_BODY_BYTES", 65_536, "Largest request body, bytes (413 above)", ge=1024, le=16_777_216)


class Settings(Section):
    """The whole configuration; `Settings.from_env()` is the one place the environment is read."""

    namespace: str = env(
        "NAMESPACE", "finpulse",
        "Prefix of topics, the consumer group and Redis keys, so deployments can share a cluster",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
    )
    log_format: LogFormat = env(
        "LOG_FORMAT", "text",
        "Log lines: `text`, or `json` (one object a line with namespace, stage, topic, partition, offset) for log pipelines",
    )
    kafka: KafkaSettings = KafkaSettings()
    pipeline: PipelineSettings = PipelineSettings()
    engine: EngineSettings = EngineSettings()
    cache: CacheSettings = CacheSettings()
    store: StoreSettings = StoreSettings()
    webhooks: WebhookSettings = WebhookSettings()
    api: ApiSettings = ApiSettings()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Read `FINPULSE_*` from `environ` (default: the process's) over those of `env_file`."""
        found: dict[str, str | None] = dict(dotenv_values(env_file)) if env_file and Path(env_file).is_file() else {}
        found.update(os.environ if environ is None else environ)
        found = {name.upper(): value for name, value in found.items()}  # names are case-insensitive
        values: dict[str, Any] = {}
        for section, name, field in fields():
            variable = env_name(field)
            if variable in found:
                target = values if section is None else values.setdefault(section, {})
                target[name] = found[variable]
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """Every setting as `FINPULSE_*` variables: what a child process needs to read these settings back."""
        found: dict[str, str] = {}
        for section, name, field in fields():
            value = getattr(self if section is None else getattr(self, section), name)
            if isinstance(value, list):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = str(value).lower()
            found[env_name(field)] = "" if value is None else str(value)
        return found

    @property
    def app_id(self) -> str:
        """Faust app id, which is also the Kafka consumer group."""
        return f"{self.namespace}-worker"

    def topic(self, stage: str) -> str:
        """Full topic name for a stage: docs, scored, dlq, aggregates, alerts."""
        return f"{self.namespace}.{stage}"

    @property
    def redis_prefix(self) -> str:
        return f"{self.namespace}:"


def env_name(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    assert isinstance(extra, dict), "every setting is declared with env()"
    return str(extra["env"])


def fields() -> Iterator[tuple[str | None, str, FieldInfo]]:
    """(section or None for the top level, field name, field) of every setting, in declaration order."""
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            for inner, inner_field in annotation.model_fields.items():
                yield name, inner, inner_field
        else:
            yield None, name, field


def markdown_table() -> str:
    """The README's settings table, generated from the fields above."""
    lines = ["| variable | section | default | meaning |", "| --- | --- | --- | --- |"]
    for section, _, field in fields():
        default = field.default
        if isinstance(default, list):
            shown = ",".join(map(str, default))
        elif default is None:
            shown = "unset"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default)
        lines.append(f"| `{env_name(field)}` | {section or ''} | `{shown}` | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
