"""Readiness (worker/health.py): what /health and finpulse_stalled report."""

from __future__ import annotations

from prometheus_client import REGISTRY

from worker.health import Readiness


def stalled(component: str) -> float | None:
    return REGISTRY.get_sample_value("finpulse_stalled", {"component": component})


def test_trouble_keeps_its_first_time_and_latest_reason_until_recovered() -> None:
    readiness = Readiness()
    assert readiness.report() == {"status": "ok", "problems": []}
    readiness.trouble("unit-persist", "SQL write failing, retry 1")
    first = readiness._problems["unit-persist"].since
    readiness.trouble("unit-persist", "SQL write failing, retry 2")
    report = readiness.report()
    assert report["status"] == "not_ready" and not readiness.ready
    [problem] = report["problems"]
    assert problem["component"] == "unit-persist" and problem["reason"].endswith("retry 2")
    assert readiness._problems["unit-persist"].since == first and stalled("unit-persist") == 1
    readiness.recovered("unit-persist")
    readiness.recovered("never-reported")  # harmless
    assert readiness.ready and stalled("unit-persist") == 0 and stalled("never-reported") is None


def test_reasons_are_capped() -> None:
    readiness = Readiness()
    readiness.trouble("unit-send", "x" * 10_000)
    assert len(readiness.report()["problems"][0]["reason"]) == 500
