"""docker/compose.yml runs Prometheus and Grafana provisioned from ops/: the mounts, host names, ports, variables
and paths that must agree between the compose file, ops/prometheus and ops/grafana (no Docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
SERVICES = COMPOSE["services"]
GRAFANA = ROOT / "ops" / "grafana"


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path (relative to docker/) of a service's bind mounts."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (ROOT / "docker" / source).resolve()
    return found


def container_file(service: str, path: str) -> Path:
    """The repo file a container path of SERVICE shows (through its bind mounts)."""
    for target, source in mounts(service).items():
        if path == target or path.startswith(target + "/"):
            return source / path[len(target):].lstrip("/")
    raise AssertionError(f"{service}: {path} is not in a bind mount")


def test_prometheus_scrapes_the_worker_with_the_repo_config() -> None:
    command = SERVICES["prometheus"]["command"]
    config_path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config.file="))
    config = yaml.safe_load(container_file("prometheus", config_path).read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "finpulse-worker" and job["metrics_path"] == "/metrics"
    worker_ports = {p.rsplit(":", 1)[1] for p in SERVICES["worker"]["ports"]}
    for target in job["static_configs"][0]["targets"]:
        host, port = target.split(":")
        assert host in SERVICES and port in worker_ports, target
    for pattern in config["rule_files"]:
        assert list(container_file("prometheus", config_path).parent.glob(pattern)), pattern


def test_grafana_is_provisioned_from_the_repo() -> None:
    env = SERVICES["grafana"]["environment"]
    provisioning = container_file("grafana", "/etc/grafana/provisioning")
    assert provisioning == (GRAFANA / "provisioning").resolve()
    sources = yaml.safe_load((provisioning / "datasources" / "finpulse.yml").read_text())["datasources"]
    for source in sources:
        host, port = re.sub(r"^https?://", "", source["url"]).split(":")
        assert host in SERVICES, source["url"]
        assert any(p.endswith(f":{port}") for p in SERVICES[host].get("ports", [])), source["url"]
    values = json.dumps(sources)  # the YAML's values, not its comments
    used = set(re.findall(r"\$\{?([A-Z]\w+)", values))
    assert used and used <= set(env), f"variables the data sources read but compose does not set: {used - set(env)}"

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "finpulse.yml").read_text())["providers"]
    dashboards = container_file("grafana", provider["options"]["path"])
    assert dashboards == (GRAFANA / "dashboards").resolve() and list(dashboards.glob("*.json"))
    assert container_file("grafana", env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()

    # The dashboard's data source variables find a provisioned source of their type.
    dash = json.loads((dashboards / "finpulse.json").read_text())
    wanted = {v["query"] for v in dash["templating"]["list"] if v["type"] == "datasource"}
    assert wanted == {source["type"] for source in sources}
