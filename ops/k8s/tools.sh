#!/usr/bin/env bash
# The pinned tools that check ops/k8s (tests/ops/test_k8s_manifests.py), into DIR (`make k8s-tools`
# puts them in $(VENV)/.tools/k8s):
#   bin/kustomize, bin/kubeconform   built with `go install` from the Go module proxy; go.sum entries are
#                                    checked against the Go checksum database (sum.golang.org)
#   keda/                            KEDA's ScaledObject and TriggerAuthentication CRDs and its Kafka
#                                    scaler's source, from KEDA's Go module (same checks)
#   kubernetes-validate/             the Kubernetes JSON schemas, from PyPI, hash-pinned (tools-requirements.txt)
# Needs Go >= 1.22.7 and a Python with pip (PYTHON, default python3).
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
KUBECONFORM_VERSION=v0.6.7
KEDA_VERSION=v2.21.0

dir=${1:?usage: ops/k8s/tools.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
# A relative path (make's default .venv/bin/python) must survive the `cd` below.
case $python in */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;; esac
mkdir -p "$dir/bin" "$dir/keda"
dir=$(cd "$dir" && pwd)
command -v go >/dev/null || { echo "ops/k8s/tools.sh: Go is needed (https://go.dev/dl/)" >&2; exit 1; }

GOBIN="$dir/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
GOBIN="$dir/bin" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"

# Outside any module: `go mod download` fetches and verifies the module zip and prints where it unpacked it.
keda=$(cd "$dir" && GOFLAGS=-modcacherw go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
  | "$python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" "$keda/config/crd/bases/keda.sh_triggerauthentications.yaml" \
  "$keda/pkg/scalers/kafka_scaler.go" "$dir/keda/"
echo "$KEDA_VERSION" > "$dir/keda/VERSION"

rm -rf "$dir/kubernetes-validate"
"$python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
  --target "$dir/kubernetes-validate" -r "$here/tools-requirements.txt"

"$dir/bin/kustomize" version
go version -m "$dir/bin/kubeconform" | awk '$1 == "mod" {print $2, $3}'  # `kubeconform -v` says "development" when built by go install
