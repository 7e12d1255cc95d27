"""`finpulse` command line: one entry point, a module per group of commands.

- `app.py`: the command groups and what commands share (console, progress, loading a model);
- `pipeline.py`: services, db, worker, produce, score, replay, api, demo;
- `models.py`: train, export, bench, model tiny;
- `subscriptions.py`: subscriptions add, list, rm;
- `access.py`: tokens create, list, revoke; secrets generate-key, rotate;
- `report.py`: report (an HTML page of a period of the store);
- `rollout.py`: compare-models, promote, model versions.
"""

# Imported for their commands, in the order `finpulse --help` lists them: the pipeline's first.
from worker.entrypoints.cli import pipeline  # isort: skip
from worker.entrypoints.cli import access, models, report, rollout, subscriptions  # isort: skip
from worker.entrypoints.cli.app import cli

__all__ = ["access", "cli", "main", "models", "pipeline", "report", "rollout", "subscriptions"]


def main() -> None:
    cli()
