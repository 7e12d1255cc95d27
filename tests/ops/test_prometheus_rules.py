"""ops/prometheus/ checked by the real promtool: the scrape config, the alert rules, and their unit tests
(ops/prometheus/tests/), which must also fail when a rule is broken."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "ops" / "prometheus"
RULES = PROM / "rules" / "finpulse.yml"
RULE_TESTS = PROM / "tests" / "finpulse_test.yml"
DOC = ROOT / "docs" / "observability.md"


def promtool_run(promtool: str, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_scrape_config_is_valid(promtool: str) -> None:
    result = promtool_run(promtool, "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # rules/*.yml is found from the config's folder


def test_rules_are_valid(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it must stay quiet."""
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


# A broken rule must turn the rule tests red: each mutation is a plausible mistake in rules/finpulse.yml.
MUTATIONS = {
    "threshold": ("/ sum by (job) (rate(finpulse_docs_consumed_total[5m])) > 0.05", "/ sum by (job) (rate(finpulse_docs_consumed_total[5m])) > 0.5"),
    "for": ("expr: up{job=\"finpulse-worker\"} == 0\n        for: 2m", "expr: up{job=\"finpulse-worker\"} == 0\n        for: 10m"),
    "label selector": ('finpulse_stalled{component="persist"}', 'finpulse_stalled{component="store"}'),
    "idle worker guard": (
        "and on (job, instance) max by (job, instance) (finpulse_store_retries_total) > 0",
        "and on (job, instance) max by (job, instance) (finpulse_store_retries_total) >= 0",
    ),
    "clock": ('{clock="kafka"}', '{clock="event"}'),
    "annotation": ("is not answering /metrics", "is down"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_rule_tests_fail_on_a_broken_rule(promtool: str, tmp_path: Path, mutation: str) -> None:
    before, after = MUTATIONS[mutation]
    text = RULES.read_text()
    assert text.count(before) == 1, f"mutation {mutation!r} no longer matches the rules"
    shutil.copytree(PROM, tmp_path / "prometheus")
    (tmp_path / "prometheus" / "rules" / "finpulse.yml").write_text(text.replace(before, after))
    assert promtool_run(promtool, "check", "rules", tmp_path / "prometheus" / "rules" / "finpulse.yml").returncode == 0
    result = promtool_run(promtool, "test", "rules", tmp_path / "prometheus" / "tests" / "finpulse_test.yml")
    assert result.returncode != 0, f"the rule tests still pass with the {mutation} broken:\n{result.stdout}"


def test_every_alert_has_a_runbook_in_the_docs() -> None:
    """runbook_url points at a section of docs/observability.md named after the alert."""
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOC.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/observability.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, f"docs/observability.md has no section for {rule['alert']}"
        assert rule["labels"]["severity"] in {"critical", "warning"}
