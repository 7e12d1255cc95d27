"""The stages a document goes through, as functions over data; no Kafka in here.

    records ──decode──► NewsItem ──score──► ScoredItem ──persist──► SQL rows, windows, alerts
                │                    │                       │
                └──── Reject ◄───────┴───────────────────────┘  (the driver dead-letters or counts them)

- `decode.py`: bytes to a validated, normalised `NewsItem` (and `ScoredItem` for persist).
- `score.py`: language (`language.py`), entities (`entities.py`), the Redis cache
  (`cache.py`) and the model on the misses, through its queue (`engine_queue.py`).
- `persist.py`: one transaction over the store's repositories (`worker/store/`):
  documents, their windows (`aggregates.py`), the alert rules (`rules.py`, pure).

The drivers in `worker/entrypoints/` (the Faust agents, `finpulse replay`, `finpulse
score`) only move records in and results out.
"""
