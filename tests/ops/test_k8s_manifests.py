"""ops/k8s: every kustomization renders, and kubeconform accepts every object against the Kubernetes and
KEDA schemas (strict: an unknown field is an error), for the oldest and newest Kubernetes we name; a
manifest broken on purpose is refused. Then what a schema cannot know: the KEDA triggers watch the
worker's own consumer group, topics and brokers and cap at the partition count, the ConfigMap holds
real settings, and the probes reach the worker's `/health` and `/live`.

Tools: `make k8s-tools` (ops/k8s/tools.sh); `make test` installs them first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.ops import kubeconform as kc
from worker.settings import Settings, env_name, fields
from worker.topics import bootstrap_servers

DIRECTORIES = [kc.K8S / "base", *kc.OVERLAYS]
SETTINGS = {env_name(field) for _, _, field in fields()}
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}  # its `sasl` values


@pytest.fixture(scope="module")
def tools() -> Path:
    try:
        kc.tool("kustomize"), kc.tool("kubeconform"), kc.keda_file("keda.sh_scaledobjects.yaml")
        for version in kc.KUBERNETES_VERSIONS:
            kc.kubernetes_schemas(version)
    except kc.ToolsMissing as exc:
        pytest.fail(str(exc))  # never a skip: `make test` installs them, so missing tools are a bug
    return kc.tools_dir()


@pytest.fixture(scope="module")
def rendered(tools: Path) -> dict[str, list[dict[str, Any]]]:
    return {directory.name: kc.render(directory) for directory in DIRECTORIES}


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def example_secrets() -> dict[str, str]:
    """ops/k8s/secrets.example.env: the keys of the Secret the pods read, with placeholder values."""
    lines = (kc.K8S / "secrets.example.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def pod_settings(objects: list[dict[str, Any]]) -> Settings:
    """The settings a pod gets from the ConfigMap and the Secret; raises on a value the worker would refuse."""
    config = one(objects, "ConfigMap", "finpulse-config")["data"]
    return Settings.from_env(environ={**config, **example_secrets()}, env_file=None)


def validate(objects: list[dict[str, Any]], version: str, tmp_path: Path) -> tuple[int, list[dict[str, Any]], str]:
    return kc.kubeconform(objects, version, kc.write_schemas(objects, version, tmp_path / f"schemas-{version}"))


def test_overlays_exist() -> None:
    assert {p.name for p in kc.OVERLAYS} >= {"cpu", "gpu"}


@pytest.mark.parametrize("version", kc.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [d.name for d in DIRECTORIES])
def test_kubeconform_accepts(rendered: dict[str, list[dict[str, Any]]], directory: str, version: str, tmp_path: Path) -> None:
    objects = rendered[directory]
    code, results, stderr = validate(objects, version, tmp_path)
    bad = [f"{r['kind']} {r['name']}: {r['status']} {r.get('msg', '')}" for r in results if r["status"] != "statusValid"]
    assert code == 0 and not bad, "\n".join(bad) or stderr
    # every object was checked against a schema: none skipped, none missing
    assert sorted((r["kind"], r["name"]) for r in results) == sorted((o["kind"], o["metadata"]["name"]) for o in objects)


def _break_container(objects: list[dict[str, Any]]) -> str:
    container = one(objects, "Deployment", "finpulse-worker")["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")  # a typo: unknown field
    return "Deployment finpulse-worker"


def _break_pdb(objects: list[dict[str, Any]]) -> str:
    one(objects, "PodDisruptionBudget", "finpulse-worker")["spec"]["maxUnavailable"] = [1]  # int or string only
    return "PodDisruptionBudget finpulse-worker"


def _break_scaledobject(objects: list[dict[str, Any]]) -> str:
    spec = one(objects, "ScaledObject", "finpulse-worker")["spec"]
    spec["maxReplicas"] = spec.pop("maxReplicaCount")  # the HPA's name, not KEDA's
    return "ScaledObject finpulse-worker"


def _break_trigger_auth(objects: list[dict[str, Any]]) -> str:
    del one(objects, "TriggerAuthentication", "finpulse-kafka")["spec"]["secretTargetRef"][0]["parameter"]  # required
    return "TriggerAuthentication finpulse-kafka"


def _unknown_kind(objects: list[dict[str, Any]]) -> str:
    objects.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledThing", "metadata": {"name": "x"}, "spec": {}})
    return "ScaledThing x"


@pytest.mark.parametrize("breaks", [_break_container, _break_pdb, _break_scaledobject, _break_trigger_auth, _unknown_kind])
def test_kubeconform_refuses_a_broken_manifest(rendered: dict[str, list[dict[str, Any]]], breaks: Any, tmp_path: Path) -> None:
    objects = copy.deepcopy(rendered["gpu"])
    broken = breaks(objects)
    code, results, _ = validate(objects, kc.KUBERNETES_VERSIONS[-1], tmp_path)
    assert code != 0
    failed = {f"{r['kind']} {r['name']}" for r in results if r["status"] != "statusValid"}
    assert failed == {broken}


@pytest.mark.parametrize("overlay", [d.name for d in kc.OVERLAYS])
def test_scaler_watches_the_workers_group_and_topics(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    settings = pod_settings(objects)
    scaled = one(objects, "ScaledObject", "finpulse-worker")["spec"]
    worker = one(objects, "Deployment", "finpulse-worker")
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
    assert "replicas" not in worker["spec"], "KEDA owns the worker count; a fixed one would be reset on every apply"
    # a partition feeds one member of the group: more workers than partitions would idle
    assert scaled["maxReplicaCount"] == settings.kafka.topic_partitions
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]

    known = kc.kafka_scaler_parameters()
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= known  # the source was read
    triggers = scaled["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == {settings.topic("docs"), settings.topic("scored")}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert set(meta) <= known, f"not read by KEDA's Kafka scaler: {set(meta) - known}"
        assert meta["consumerGroup"] == settings.app_id
        assert meta["bootstrapServers"].split(",") == bootstrap_servers(settings.kafka.url)
        assert meta["offsetResetPolicy"] == "earliest"  # the worker's consumer_auto_offset_reset
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) > 0
        tls = settings.kafka.security_protocol in ("SSL", "SASL_SSL")
        assert meta.get("tls", "disable") == ("enable" if tls else "disable")
        if settings.kafka.security_protocol.startswith("SASL_"):
            assert meta["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
            auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
            given = [r["parameter"] for refs in ("secretTargetRef", "configMapTargetRef") for r in auth.get(refs, [])]
            assert {"username", "password"} <= set(given)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", [d.name for d in kc.OVERLAYS])
def test_settings_and_secrets_are_real_names(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] == "Secret"], "secrets are made by the operator, never committed"
    config = one(objects, "ConfigMap", "finpulse-config")["data"]
    assert set(config) <= SETTINGS, f"not finpulse settings: {set(config) - SETTINGS}"
    secret_keys = set(example_secrets())
    assert secret_keys <= SETTINGS and not secret_keys & set(config)
    for o in objects:
        if o["kind"] not in ("Deployment", "Job"):
            continue
        for container in o["spec"]["template"]["spec"]["containers"]:
            for name, entry in _env(container).items():
                assert name in SETTINGS, f"{o['metadata']['name']}: {name} is no finpulse setting"
                ref = entry.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == "finpulse-secrets"
                    key = ref["secretKeyRef"]["key"]
                    assert key in secret_keys, f"{key} missing from secrets.example.env"
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config


@pytest.mark.parametrize("overlay", [d.name for d in kc.OVERLAYS])
def test_probes_pdbs_and_services_match_the_pods(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    config = one(objects, "ConfigMap", "finpulse-config")["data"]
    worker = one(objects, "Deployment", "finpulse-worker")["spec"]["template"]["spec"]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert port["http"] == int(config["FINPULSE_WEB_PORT"]) and config["FINPULSE_WEB_HOST"] == "0.0.0.0"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health"  # 503 while a stage is stuck
    assert worker["livenessProbe"]["httpGet"]["path"] == "/live"  # the event loop
    assert worker["startupProbe"]["httpGet"]["path"] == "/live"
    api = one(objects, "Deployment", "finpulse-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    host = {h["name"]: h["value"] for h in api["readinessProbe"]["httpGet"]["httpHeaders"]}["Host"]
    assert host in config["FINPULSE_API_ALLOWED_HOSTS"].split(","), "the API would answer its probe 400"
    for kind in ("PodDisruptionBudget", "Service"):
        for o in (o for o in objects if o["kind"] == kind):
            selector = o["spec"]["selector"].get("matchLabels", o["spec"]["selector"])
            pods = [
                d for d in objects if d["kind"] == "Deployment"
                and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(pods) == 1, f"{kind} {o['metadata']['name']} selects {len(pods)} Deployments"


def test_gpu_overlay_asks_for_a_gpu_and_tensorrt(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["gpu"]
    pod = one(objects, "Deployment", "finpulse-worker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert "finpulse-worker-gpu" in container["image"]
    assert pod_settings(objects).engine.backend == "tensorrt"
    cpu = one(rendered["cpu"], "Deployment", "finpulse-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
