"""The SQL store: one engine factory, repositories that share a transaction, migrations.

`database.py` makes the engine and runs Alembic; `documents.py`, `aggregates.py`,
`alerts.py` and `subscriptions.py` hold every query; `unit_of_work.py` puts the first
three on one connection so the persist stage writes them atomically.
"""
