"""The streaming worker: Faust agents for ingest, score and persist, and the `finpulse` CLI."""
