#!/usr/bin/env bash
# Benchmark of issue 6: flotilla apply of two lab clusters (multi-primary,
# multi-network) from an empty state against the seed procedure (openssl and
# kubectl) on the same clusters, and a no-op re-apply with its write calls.
#
#   scenarios/bench/run.sh [ITERATIONS] [KEY_ALGORITHM]   # defaults: 3 RSA-4096
#
# Prints the figures (medians) and the write calls of the no-op re-apply.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLOTILLA_BENCH=1
export FLOTILLA_BENCH_N="${1:-3}"
export FLOTILLA_BENCH_ALG="${2:-RSA-4096}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! go test ./server/ -run '^TestLabBenchmark$' -count=1 -v -timeout 30m >"$log" 2>&1; then
	cat "$log" >&2
	exit 1
fi
sed -n 's/^ *bench_lab_test.go:[0-9]*: bench: //p' "$log"
