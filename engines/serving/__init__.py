"""Run time: what the worker needs to score texts, and nothing that trains or exports models.

types (Scores, the Engine protocol), batching (Batcher), base (BatchedEngine, which every
backend extends), loader (load_engine) and backends/ (one module per runtime). Nothing here
imports engines.training or engines.export.
"""
