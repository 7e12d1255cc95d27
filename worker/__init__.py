"""The streaming worker. Where a document goes next, folder by folder:

    entrypoints/  drivers: the Faust worker, replay, `finpulse score`, the CLI, the API, the demo
    stages/       decode → score → persist, as functions over data (no Kafka)
    store/        SQL: the engine, repositories, one unit of work per batch
    delivery/     after the commit: the alerts topic and webhooks (the outbox)

Beside them: `settings.py` (every setting, by section), `backoff.py` (one retry policy),
`topics.py` (Kafka names and admin), `metrics.py`, `logfilter.py`, `samples.py`.
"""
