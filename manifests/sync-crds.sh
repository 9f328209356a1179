#!/bin/sh
# Copy the CRDs from crds/ (the one source) into the Helm chart and the
# kustomize base, which cannot reference files outside their own folders.
# tests/unit/test_manifests.py fails when the copies differ.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
for crd in "$root"/crds/*.yaml; do
  cp "$crd" "$root/helm/tritonresnet-operator/crds/"
  cp "$crd" "$root/manifests/base/crds/"
done
