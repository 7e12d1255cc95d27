"""Prometheus metrics of the worker, served on /metrics by the Faust web server."""

from prometheus_client import Counter, Gauge, Histogram

DOCS_IN = Counter("finpulse_docs_consumed_total", "Messages read from the docs topic")
DLQ = Counter("finpulse_dlq_total", "Messages sent to the DLQ", ["stage", "reason"])
SEND_FAILURES = Counter("finpulse_send_failures_total", "Messages the producer refused (e.g. over the size limit)", ["topic"])
SCORED = Counter("finpulse_scored_total", "Documents scored and emitted", ["source_of_score"])
ENGINE_TEXTS = Counter("finpulse_engine_texts_total", "Texts sent through the model")
ENGINE_BATCHES = Counter("finpulse_engine_batches_total", "Micro-batches sent to the model")
ENGINE_ERRORS = Counter("finpulse_engine_errors_total", "Model calls that raised")
ENGINE_SECONDS = Histogram(
    "finpulse_engine_batch_seconds", "Model time per micro-batch", ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENGINE_BATCH_TEXTS = Histogram(
    "finpulse_engine_batch_texts", "Distinct texts per model call (cache misses of a scoring batch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
MODEL_INFO = Gauge("finpulse_model_info", "1 for the model version and backend this worker scores with", ["version", "backend"])
CACHE_HITS = Counter("finpulse_cache_hits_total", "Scores served from Redis")
CACHE_MISSES = Counter("finpulse_cache_misses_total", "Scores not found in Redis")
CACHE_ERRORS = Counter("finpulse_cache_errors_total", "Redis calls that failed")
CACHE_UP = Gauge("finpulse_cache_up", "1 while the Redis cache is in use, 0 while bypassed")
DOCUMENTS_STORED = Counter("finpulse_documents_stored_total", "Documents committed to the SQL store by the persist stage")
LAST_STORED = Gauge("finpulse_last_stored_timestamp_seconds", "Unix time of the persist stage's last commit")
PERSIST_BATCH_DOCUMENTS = Histogram(
    "finpulse_persist_batch_documents", "Documents per SQL transaction of the persist stage",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000),
)
END_TO_END = Histogram(
    "finpulse_end_to_end_seconds",
    "From a document's event time (clock=event: published_at, else its Kafka time) or its Kafka time (clock=kafka)"
    " to its commit in SQL",
    ["clock"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21_600, 86_400),
)
CONSUMER_LAG = Gauge(
    "finpulse_consumer_lag", "Messages of an assigned partition not yet committed by this worker (high-water mark"
    " minus committed offset)", ["topic", "partition"],
)
STORE_ROWS = Counter("finpulse_store_rows_total", "Rows upserted into the SQL store")
STORE_RETRIES = Counter("finpulse_store_retries_total", "SQL writes retried after a transient failure")
STORE_UP = Gauge("finpulse_store_up", "1 once the store answered at start or took a write, 0 while writes are failing")
ALERTS_FIRED = Counter("finpulse_alerts_fired_total", "Alerts stored (each once per subscription, key and window)", ["rule"])
ALERTS_PUBLISHED = Counter("finpulse_alerts_published_total", "Alerts sent to the alerts topic")
WEBHOOK_POSTS = Counter("finpulse_webhook_posts_total", "Webhook POST attempts", ["outcome"])
STALLED = Gauge("finpulse_stalled", "1 while a part of the worker is stuck (retrying, or a partition paused); see /health", ["component"])
PARTITIONS_PAUSED = Gauge("finpulse_partitions_paused", "Partitions paused on a record batch the consumer cannot decode", ["topic"])
UNDECODABLE_BATCHES = Counter(
    "finpulse_undecodable_batches_total", "Record batches no codec here can read (each pauses its partition)", ["topic"]
)
