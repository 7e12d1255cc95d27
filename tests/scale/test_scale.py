"""Scale-out on Kafka consumer groups: 1, 2 and 4 workers drain the same burst; every document is stored
exactly once and the aggregates equal a recomputation, whatever the worker count (docs/scaling.md).

The throughput and lag figures are measured, never asserted: they depend on the machine and on what
else runs on it. What is asserted is what must hold at any speed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Database, assert_aggregates_match_documents
from tests.scale import report
from tests.scale.conftest import DOCUMENTS, PARTITIONS, WORKER_COUNTS, record
from tests.scale.harness import ScaleRun, lscpu
from worker.entrypoints.bench_deployment import shown_settings

pytestmark = pytest.mark.integration
CPU_FIELDS = ("Model name", "CPU(s)", "Thread(s) per core", "Flags", "Hypervisor vendor", "L3 cache")


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_scale_out(workers: int, request: pytest.FixtureRequest, tiny_model: Path, database: Database, tmp_path: Path) -> None:
    assert workers <= PARTITIONS, "a worker beyond the partition count would idle"
    with ScaleRun(workers, DOCUMENTS, PARTITIONS, tiny_model, database, tmp_path) as run:
        result = run.run()
        # The group really scaled out: N members, each holding docs partitions, all of them covered.
        assert len(result.docs_partitions_per_worker) == workers
        assert min(result.docs_partitions_per_worker) >= 1 and sum(result.docs_partitions_per_worker) == PARTITIONS
        assert run.dead_letters() == 0
        expected = {f"{run.namespace}-{n}" for n in range(DOCUMENTS)}

    # Exactly once: every document, once, with one model version; nothing else.
    rows = database.fetch("SELECT doc_id, count(*) AS versions FROM documents GROUP BY doc_id")
    assert {r["doc_id"] for r in rows} == expected
    assert all(r["versions"] == 1 for r in rows)
    assert database.count() == DOCUMENTS
    assert result.samples[-1].lag_docs == 0 and result.samples[-1].lag_scored == 0
    # The aggregates equal a brute-force recomputation from the stored documents.
    result.aggregate_rows = assert_aggregates_match_documents(database, windows=(60, 300, 3600))

    figures = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": {k: v for k, v in lscpu().items() if k in CPU_FIELDS},
        "settings": shown_settings(run.settings),
        **result.to_json(),
    }
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    (report.RESULTS / f"workers-{workers}.json").write_text(json.dumps(figures, indent=1) + "\n")
    record(request.config, workers)
