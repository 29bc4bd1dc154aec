#!/usr/bin/env bash
# The demo: local lab clusters east and west, then their status.
# KEEP=1 leaves the clusters running (flotilla-lab down stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=./bin/flotilla-lab
if [ "${KEEP:-0}" != 1 ]; then
  trap '$lab down >/dev/null 2>&1 || true' EXIT
fi
$lab down >/dev/null 2>&1 || true
eval "$($lab up east west)"
echo
$lab status
echo
kubectl="$($lab build 2>/dev/null)/kubectl"
for ctx in east west; do
  echo "== $ctx"
  "$kubectl" --context "$ctx" get nodes -o wide
  echo "CRDs installed: $("$kubectl" --context "$ctx" get crd -o name | wc -l)"
done
