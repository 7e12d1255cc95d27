"""All worker settings, read from the environment (prefix FINPULSE_) in this one place."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob, with its unit and default; `FINPULSE_<NAME>` sets it."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_", env_file=".env", extra="ignore")

    namespace: str = Field(
        "finpulse",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
        description="Prefix of topic names, the consumer group and Redis keys, so deployments can share a cluster",
    )
    kafka_url: str = Field("kafka://127.0.0.1:9092", description="Faust broker URL(s), comma-separated")
    redis_url: str | None = Field("redis://127.0.0.1:6379/0", description="Score cache; empty disables it")
    database_url: str = Field(
        "sqlite+aiosqlite:///finpulse.db", description="SQLAlchemy async URL (postgresql+asyncpg://… in production)"
    )
    model_dir: str = Field("models/current", description="Hugging Face checkpoint directory or hub id")
    backend: str = Field("auto", description="Engine backend: auto (TensorRT on a GPU, else ONNX Runtime if exported, else torch), torch, onnxruntime, tensorrt")
    max_length: int = Field(128, ge=8, le=512, description="Tokens kept per text")
    token_budget: int = Field(
        8192, ge=8, description="Padded tokens per engine batch; 1024-2048 is faster on small CPUs (docs/model-quality.md)"
    )
    engine_threads: int | None = Field(None, ge=1, description="CPU threads for the engine (default: torch's)")

    batch_max: int = Field(64, ge=1, le=4096, description="Most documents per scoring micro-batch")
    batch_wait_ms: int = Field(50, ge=1, le=60_000, description="Longest wait to fill a micro-batch, ms")
    persist_batch_max: int = Field(500, ge=1, le=10_000, description="Most rows per SQL upsert")
    persist_batch_wait_ms: int = Field(200, ge=1, le=60_000, description="Longest wait to fill an upsert, ms")
    max_text_chars: int = Field(20_000, ge=1, description="Texts longer than this go to the DLQ")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="Faust processing guarantee for the Kafka outputs"
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions for topics the worker creates")
    session_timeout_s: float = Field(
        20.0, ge=6, le=1800, description="Kafka drops a worker that sent no heartbeat this long; its partitions move on"
    )
    rebalance_timeout_s: float = Field(30.0, ge=1, description="Time workers get to rejoin the group in a rebalance, s")

    watchlist: str | None = Field(None, description="YAML watchlist of tickers and aliases (default: the bundled example)")
    detect_language: bool = Field(True, description="Detect the language of items that carry no `lang` (lingua)")
    windows: str = Field("60,300,3600", description="Tumbling window sizes for aggregates, seconds, comma-separated")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="Lifetime of a cached score, s")
    cache_timeout_s: float = Field(0.5, gt=0, description="Redis socket timeout, s")
    cache_retry_s: float = Field(5.0, gt=0, description="After a Redis failure, skip the cache this long, s")

    store_retry_initial_s: float = Field(0.5, gt=0, description="First back-off after a SQL failure, s")
    store_retry_max_s: float = Field(10.0, gt=0, description="Longest back-off between SQL retries, s")

    subscriptions_refresh_s: float = Field(2.0, gt=0, description="Workers reload alert subscriptions this often, s")
    outbox_interval_s: float = Field(0.5, gt=0, description="How often fired alerts are sent to the alerts topic and webhooks, s")
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to private, loopback and link-local addresses (refused by default: SSRF)"
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook POST, s")
    webhook_max_attempts: int = Field(8, ge=1, description="POSTs per alert before its delivery is marked failed")
    webhook_retry_initial_s: float = Field(1.0, gt=0, description="First back-off after a failed POST, s (doubles)")
    webhook_retry_max_s: float = Field(300.0, gt=0, description="Longest back-off between POSTs, s")

    api_token: str | None = Field(None, description="Bearer token the HTTP API requires for writes; unset = writes refused")
    api_host: str = Field("127.0.0.1", description="Interface of `finpulse api`")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of `finpulse api`")

    web_port: int = Field(6066, ge=0, le=65535, description="Port for /health and /metrics")
    web_host: str = Field("127.0.0.1", description="Interface for /health and /metrics")

    @cached_property
    def app_id(self) -> str:
        """Faust app id, which is also the Kafka consumer group."""
        return f"{self.namespace}-worker"

    def topic(self, stage: str) -> str:
        """Full topic name for a stage: docs, scored, dlq, aggregates, alerts."""
        return f"{self.namespace}.{stage}"

    @property
    def window_sizes(self) -> list[int]:
        sizes = sorted({int(part) for part in self.windows.split(",") if part.strip()})
        if not sizes or sizes[0] <= 0:
            raise ValueError(f"FINPULSE_WINDOWS must list positive seconds, got {self.windows!r}")
        return sizes

    @property
    def redis_prefix(self) -> str:
        return f"{self.namespace}:"
