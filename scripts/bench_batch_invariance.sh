#!/usr/bin/env bash
# What batch-invariant mode costs (issue 21's benchmark), in one device call: `ember bench` at
# 1, 64 and 256 sequences and a 512-token prefill, on the default model and the synthetic 8B
# shape, in the default mode and with --batch-invariant. Prints one table: tok/s of each mode
# and the invariant mode's cost (1 - invariant / default; targets: <= 25 % at batch 1, <= 15 %
# at 64 and 256).
#
#   scripts/bench_batch_invariance.sh [DEVICE] [MODELS...]
#
# MODELS default to the default model (SmolLM2-135M) and synthetic:llama-8b-q4_0.
set -euo pipefail
device=${1:-cuda}
shift || true
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
    models=(default synthetic:llama-8b-q4_0)
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

for model in "${models[@]}"; do
    model_args=()
    [ "$model" != default ] && model_args=(--model "$model")
    for mode in default invariant; do
        mode_args=()
        [ "$mode" = invariant ] && mode_args=(--batch-invariant)
        out="$dir/$(echo "$model" | tr -c 'A-Za-z0-9\n' _).$mode"
        ember bench --device "$device" "${model_args[@]}" "${mode_args[@]}" \
            --batch-sizes 1,64,256 --prefill-tokens 512 >"$out" 2>"$out.err" || {
            cat "$out" "$out.err"
            exit 1
        }
        echo "$model" >"$out.model"
    done
done

python3 - "$dir" <<'PY'
import sys
from pathlib import Path

def rows(path: Path) -> dict[tuple[str, int], float]:
    """(work, batch) -> tok/s from `ember bench`'s table."""
    found = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in ("prefill", "decode"):
            found[parts[0], int(parts[1])] = float(parts[4])
    return found

directory = Path(sys.argv[1])
print(f"{'model':<28} {'work':<8} {'batch':>5} {'default tok/s':>14} {'invariant tok/s':>16} "
      f"{'cost':>7}")
for default in sorted(directory.glob("*.default")):
    model = Path(f"{default}.model").read_text().strip()
    base = rows(default)
    inv = rows(default.with_suffix(".invariant"))
    for key in base:
        if key not in inv:
            continue
        cost = 1 - inv[key] / base[key]
        print(f"{model:<28} {key[0]:<8} {key[1]:>5} {base[key]:>14.1f} {inv[key]:>16.1f} "
              f"{cost:>6.1%}")
for header in sorted(directory.glob("*.default")):
    print(header.read_text().splitlines()[0])
PY
