"""The worker's consumer waits FINPULSE_FETCH_MAX_WAIT_MS for a fetch, not the 1.5 s Faust's driver hard-codes."""

from __future__ import annotations

import uuid

from worker.entrypoints.guarded_app import GuardedApp
from worker.kafka_security import faust_credentials
from worker.settings import Settings

from .conftest import LOCAL


async def test_the_worker_consumer_fetches_with_the_configured_wait(services: None) -> None:
    kafka = Settings.from_env({**LOCAL, "FINPULSE_FETCH_MAX_WAIT_MS": "37"}).kafka
    app = GuardedApp(f"t-fetch-{uuid.uuid4().hex[:8]}", broker=kafka.url, broker_credentials=faust_credentials(kafka),
                     store="memory://", autodiscover=False, fetch_max_wait_ms=kafka.fetch_max_wait_ms)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        # The fetcher aiokafka builds at start is what sends the fetches: the setting must reach it.
        assert consumer._fetcher._fetch_max_wait_ms == 37
    finally:
        await consumer.stop()
