"""Render ops/k8s with kustomize and validate it with kubeconform against pinned, offline schemas.

The tools and schemas come from `make k8s-tools` (ops/k8s/tools.sh) into `<venv>/.tools/k8s`:
kustomize and kubeconform built from the Go module proxy, KEDA's CRDs and Kafka scaler from KEDA's Go
module, and the Kubernetes JSON schemas (strict: unknown fields are errors) from the PyPI package
kubernetes-validate. Its schemas point into a shared `_definitions.json` by an absolute URL
(https://kubernetes.io/api/...) that kubeconform would try to download, so `write_schemas` makes a
standalone copy of each schema a manifest needs, with the definitions it reaches embedded and the
references made local; nothing else in them changes. KEDA's CRDs become JSON schemas the way
kubeconform's openapi2jsonschema.py does it in strict mode: every object that lists its properties
refuses others.

`python -m tests.ops.kubeconform ops/k8s/overlays/gpu` renders and validates one directory.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest and newest Kubernetes releases the manifests are checked against (both in kubernetes-validate).
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
SCHEMA_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"  # kubeconform's names: deployment-apps-v1.json


class ToolsMissing(RuntimeError):
    pass


def tools_dir() -> Path:
    """Where `make k8s-tools` put the tools: FINPULSE_K8S_TOOLS, else `<this venv>/.tools/k8s`."""
    return Path(os.environ.get("FINPULSE_K8S_TOOLS") or Path(sys.prefix) / ".tools" / "k8s")


def tool(name: str) -> Path:
    path = tools_dir() / "bin" / name
    if not path.is_file():
        raise ToolsMissing(f"{path} is missing: run `make k8s-tools` (ops/k8s/tools.sh)")
    return path


def kubernetes_schemas(version: str) -> Path:
    path = tools_dir() / "kubernetes-validate" / "kubernetes_validate" / "kubernetes-json-schema" / f"v{version}-local-strict"
    if not (path / "_definitions.json").is_file():
        raise ToolsMissing(f"{path} is missing: run `make k8s-tools` (ops/k8s/tools.sh)")
    return path


def keda_file(name: str) -> Path:
    path = tools_dir() / "keda" / name
    if not path.is_file():
        raise ToolsMissing(f"{path} is missing: run `make k8s-tools` (ops/k8s/tools.sh)")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build DIRECTORY`, as a list of objects."""
    done = subprocess.run([str(tool("kustomize")), "build", str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"kustomize build {directory} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_name(api_version: str, kind: str) -> str:
    """kubeconform's file name for a kind: `deployment-apps-v1.json`, `service-v1.json`, `scaledobject-keda-v1alpha1.json`."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


# --- Kubernetes: standalone copies of kubernetes-validate's schemas ---------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _localise(node: Any) -> Any:
    """Every `<anything>#/$defs/NAME` reference as `#/$defs/NAME`."""
    if isinstance(node, dict):
        return {
            key: ("#/$defs/" + value.split("#/$defs/", 1)[1] if key == "$ref" and "#/$defs/" in value else _localise(value))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_localise(value) for value in node]
    return node


def standalone(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA with the definitions it reaches, directly or not, embedded under `$defs` and referenced locally."""
    needed: dict[str, Any] = {}
    pending = [ref for ref in _refs(schema)]
    while pending:
        ref = pending.pop()
        if "#/$defs/" not in ref:
            raise ValueError(f"unexpected $ref {ref!r}")
        name = ref.split("#/$defs/", 1)[1]
        if name not in needed:
            needed[name] = definitions[name]
            pending.extend(_refs(definitions[name]))
    result = _localise(schema)
    result["$defs"] = _localise(needed)
    return result


# --- KEDA: its CRDs as strict JSON schemas ------------------------------------------------------------------

def _strict(node: Any) -> Any:
    """openapi2jsonschema's strict mode: an object schema that lists properties allows no others."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(value) for value in node]
    return node


def crd_schemas(crd_file: Path) -> dict[str, dict[str, Any]]:
    """kubeconform file name -> JSON schema, for each served version of the CRD in CRD_FILE."""
    crd = yaml.safe_load(crd_file.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    found = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served"):
            continue
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        schema["properties"]["metadata"] = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
        found[schema_name(f"{group}/{version['name']}", kind)] = _strict(schema)
    return found


KEDA_CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml")


def write_schemas(objects: Iterable[dict[str, Any]], version: str, directory: Path) -> Path:
    """The schema of every kind among OBJECTS, for Kubernetes VERSION, into DIRECTORY (kubeconform's names)."""
    source = kubernetes_schemas(version)
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    custom: dict[str, dict[str, Any]] = {}
    for crd in KEDA_CRDS:
        custom.update(crd_schemas(keda_file(crd)))
    directory.mkdir(parents=True, exist_ok=True)
    for name in sorted({schema_name(o["apiVersion"], o["kind"]) for o in objects}):
        if name in custom:  # ObjectMeta from the same Kubernetes version as the built-in kinds
            schema = standalone(custom[name], definitions)
        elif (source / name).is_file():
            schema = standalone(json.loads((source / name).read_text()), definitions)
        else:
            continue  # no schema: kubeconform reports the kind as unknown, and the check fails
        (directory / name).write_text(json.dumps(schema))
    return directory


def kubeconform(objects: list[dict[str, Any]], version: str, schemas: Path) -> tuple[int, list[dict[str, Any]], str]:
    """Validate OBJECTS with kubeconform -strict against the schemas in SCHEMAS only (no network).

    Returns its exit status, one result per object (`filename`, `kind`, `name`, `status`, `msg`) and stderr.
    """
    stream = yaml.safe_dump_all(objects, sort_keys=False)
    done = subprocess.run(
        [
            str(tool("kubeconform")), "-strict", "-summary", "-verbose", "-output", "json",
            "-kubernetes-version", version, "-schema-location", f"{schemas}/{SCHEMA_TEMPLATE}", "-",
        ],
        input=stream, capture_output=True, text=True, timeout=120,
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {"resources": []}
    return done.returncode, report.get("resources") or [], done.stderr


def kafka_scaler_parameters() -> set[str]:
    """The metadata names KEDA's Kafka scaler reads (its `keda:"name=..."` tags), from the pinned KEDA source."""
    source = keda_file("kafka_scaler.go").read_text()
    return set(re.findall(r'keda:"name=([A-Za-z0-9]+)', source))


def main(argv: list[str]) -> int:
    import tempfile

    failed = 0
    for directory in map(Path, argv or map(str, OVERLAYS)):
        objects = render(directory)
        for version in KUBERNETES_VERSIONS:
            with tempfile.TemporaryDirectory() as tmp:
                code, results, stderr = kubeconform(objects, version, write_schemas(objects, version, Path(tmp)))
            for result in results:
                print(f"{directory} v{version}: {result['kind']} {result['name']}: {result['status']} {result.get('msg', '')}")
            if stderr.strip():
                print(stderr.strip(), file=sys.stderr)
            failed |= code
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
