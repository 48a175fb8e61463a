#!/usr/bin/env bash
# Service classes under load (issue 16's benchmark): an interactive tenant at 4 streams beside a
# batch tenant at 256 streams, on a server with a tenants file (classes, fair share, priority
# preemption) and on the same server without one (every request equal, first come first
# served), and the interactive tenant alone on each. Servers alternate, twice.
#
#   scripts/bench_service_classes.sh MODEL [DEVICE] [ROUNDS]
#
# Prints `ember bench serve --mix`'s tables, then a line per round with what the issue's targets
# compare: the interactive tenant's TTFT and ITL p99 beside the flood over its p99 alone (on the
# server with classes; target <= 2x), the aggregate tok/s with classes over without (target
# >= 95 %), and the batch tenant's share of the tokens.
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
        ember bench serve --url "http://127.0.0.1:$port" --mix "$alone" --ignore-eos \
            --json "$dir/alone-$round-$port.json"
        echo "######## round $round, server $name, interactive + batch"
        ember bench serve --url "http://127.0.0.1:$port" --mix "$loaded" --ignore-eos \
            --json "$dir/loaded-$round-$port.json"
    done
done
python3 - "$dir" "$rounds" <<'PY'
import json
import sys

directory, rounds = sys.argv[1], int(sys.argv[2])
def figures(phase, round_, port):
    with open(f"{directory}/{phase}-{round_}-{port}.json") as f:
        return json.load(f)
print("round | TTFT p99 alone / beside (x) | ITL p99 alone / beside (x) | aggregate with / "
      "without classes | batch share")
for r in range(1, rounds + 1):
    alone = figures("alone", r, 8130)["tenants"]["interactive"]
    loaded = figures("loaded", r, 8130)
    chat = loaded["tenants"]["interactive"]
    plain = figures("loaded", r, 8131)["aggregate"]["output_tokens_per_s"]
    with_classes = loaded["aggregate"]["output_tokens_per_s"]
    print(
        f"{r} | {alone['ttft_p99_s']:.3f} / {chat['ttft_p99_s']:.3f} "
        f"({chat['ttft_p99_s'] / alone['ttft_p99_s']:.1f}x) | {alone['itl_p99_s']:.3f} / "
        f"{chat['itl_p99_s']:.3f} ({chat['itl_p99_s'] / alone['itl_p99_s']:.1f}x) | "
        f"{with_classes:,.0f} / {plain:,.0f} ({with_classes / plain:.1%}) | "
        f"{loaded['tenants']['batch']['output_token_share']:.1%}"
    )
PY
