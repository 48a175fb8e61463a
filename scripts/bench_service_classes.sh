#!/usr/bin/env bash
# Service classes under load (issue 16's benchmark): an interactive tenant at 4 streams beside a
# batch tenant at 256 streams, on a server with a tenants file (classes, fair share, priority
# preemption) and on the same server without one (every request equal, first come first
# served), and the interactive tenant alone on each. Servers alternate, twice.
#
#   scripts/bench_service_classes.sh MODEL [DEVICE] [ROUNDS]
#
# Prints `ember bench serve --mix`'s tables; the interactive tenant's TTFT/ITL p99 under load
# against its p99 alone, and the aggregate tok/s of both servers, are what to compare.
set -euo pipefail
model=$1
device=${2:-cuda}
rounds=${3:-2}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

python3 - "$dir/tenants.toml" <<'PY'
import sys
from ember.serve.api_keys import key_hash
with open(sys.argv[1], "w") as f:
    f.write(
        f'[tenants.chat]\nkeys = ["{key_hash("key-chat")}"]\nclass = "interactive"\n\n'
        f'[tenants.bulk]\nkeys = ["{key_hash("key-bulk")}"]\nclass = "batch"\n'
    )
PY

serve() {  # serve PORT [ARGS...]: start a server and wait until it is ready
    local port=$1
    shift
    ember serve --device "$device" --model "$model" --port "$port" --log-level warning "$@" \
        >"$dir/serve-$port.log" 2>&1 &
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return 0
        sleep 0.2
    done
    cat "$dir/serve-$port.log"
    return 1
}

serve 8130 --tenants "$dir/tenants.toml"
serve 8131
alone=interactive:key-chat:4:128:128
loaded=$alone,batch:key-bulk:256:128:12288
for port in 8130 8131; do  # warm-up: first requests of each shape
    ember bench serve --url "http://127.0.0.1:$port" --mix "batch:key-bulk:256:16:512" \
        --ignore-eos >/dev/null
done
for round in $(seq "$rounds"); do
    for port in 8130 8131; do
        name=$([ "$port" = 8130 ] && echo "with classes" || echo "without classes")
        echo "######## round $round, server $name, interactive alone"
        ember bench serve --url "http://127.0.0.1:$port" --mix "$alone" --ignore-eos
        echo "######## round $round, server $name, interactive + batch"
        ember bench serve --url "http://127.0.0.1:$port" --mix "$loaded" --ignore-eos
    done
done
