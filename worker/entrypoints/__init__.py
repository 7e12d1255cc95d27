"""The drivers and entry points: they move records into the stages and results out.

- `stream.py`: the Faust agents (the worker): `<ns>.docs` → decode, score → `<ns>.scored` → persist;
  `in_order.py` lets the score agent work on several batches and finish them in order, and
  `guarded_app.py` is its Faust app (an unreadable batch pauses one partition; the fetch wait).
- `replay.py`: a time range of a topic through the same stages, resumable.
- `cli/`: the `finpulse` command line, `finpulse score` included (a file through decode and score).
- `api.py`: the HTTP API over the store; `demo.py`: the whole pipeline on embedded defaults.
"""
