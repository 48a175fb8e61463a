#!/usr/bin/env bash
# Structured outputs under load (issue 17's benchmark): 64 free streams, 64 streams constrained
# by a JSON schema (scripts/bench_data/json_schema_body.json: six objects of four fields,
# ~150 tokens), and 56 free + 8 constrained at once, against one server; then the same at 16
# streams (14 + 2) for the CPU. Prints `ember bench serve`'s tables.
#
#   scripts/bench_structured_outputs.sh MODEL [DEVICE] [STREAMS] [REQUESTS_PER_STREAM]
#
# SERVE_FLAGS adds flags to `ember serve` (e.g. SERVE_FLAGS="--mask-workers 0"); ROUNDS (2) repeats.
set -euo pipefail
model=$1
device=${2:-cuda}
streams=${3:-64}
per=${4:-8}
here=$(cd "$(dirname "$0")" && pwd)
body=$here/bench_data/json_schema_body.json
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port=8140
# shellcheck disable=SC2086  # SERVE_FLAGS is a list of flags
ember serve --device "$device" --model "$model" --port "$port" --log-level warning \
    ${SERVE_FLAGS:-} >"$dir/serve.log" 2>&1 &
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
    sleep 0.2
done
url=http://127.0.0.1:$port
prompt="List six things in a shed as JSON."
few=$((streams / 8))
many=$((streams - few))
bench() { ember bench serve --url "$url" --prompt "$prompt" --max-tokens 256 --temperature 0.8 "$@"; }
bench --concurrency 8 --requests 16 --extra-body "$body" >/dev/null  # warm-up and compile
for round in $(seq "${ROUNDS:-2}"); do
    echo "######## round $round: $streams free"
    bench --concurrency "$streams" --requests $((streams * per)) --ignore-eos --max-tokens 160
    echo "######## round $round: $streams constrained"
    bench --concurrency "$streams" --requests $((streams * per)) --extra-body "$body"
    echo "######## round $round: $many free + $few constrained"
    bench --ignore-eos --max-tokens 160 \
        --mix "free:k:$many:160:$((many * per)),json:k:$few:256:$((few * per)):$body"
done
