#!/usr/bin/env bash
# The CPU figures of docs/performance.md, in one go (a few minutes on 2 cores):
#     bash benchmarks/cpu_check.sh [OUT_DIR] [PUBLISHED_CHECKOUT]
# With a checkout of the published code (git clone https://github.com/EIS-Hub/hSNN), its
# figures are measured in the same minutes (benchmarks/published_code.py) and compared.
# Run it on an otherwise idle machine: every figure is wall time.
set -euo pipefail
out="${1:-benchmark_results}"
mkdir -p "$out"
bench() { name="$1"; shift; python3 benchmarks/benchmark.py --out "$out/$name.json" "$@" > "$out/$name.log" 2>&1; }
bench mts_xor_4layers --dataset_name mts_xor --n_layers 4 --epochs 5
bench shd_4x32 --dataset_name shd --n_layers 4 --n_hid 32 --epochs 5
bench shd_4x128 --dataset_name shd --n_layers 4 --n_hid 128 --epochs 4
bench mts_xor_10_seeds --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 2 --compare_sequential
if [ -n "${2:-}" ]; then
    python3 benchmarks/published_code.py --published "$2" --rounds 2 --out "$out/published.json" > "$out/published.log" 2>&1
    tail -n 6 "$out/published.log"
fi
python3 benchmarks/seed_scaling.py --n_layers 4 --out "$out/seed_scaling.json" > "$out/seed_scaling.log" 2>&1
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
import statistics
published = Path(sys.argv[1]) / "published.json"  # the published code, same minutes (if measured)
runs = json.loads(published.read_text()) if published.exists() else {}
reference = {name: statistics.median(runs[key]) for name, key in (("mts_xor_4layers", "mts_xor_published"),
             ("shd_4x32", "shd_epoch_published")) if runs.get(key)}
print("| configuration | compile s | s/epoch | published s/epoch | ratio | validation s | peak MB | first-layer matmul s |")
print("|---|---|---|---|---|---|---|---|")
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    r, name = json.loads(path.read_text()), path.stem
    if name in ("seed_scaling", "published"):
        continue
    ref = reference.get(name)
    ratio = f"{ref / r['epoch_seconds']:.2f}x" if ref else (f"vmap {r.get('vmap_speedup')}x vs sequential" if r.get("vmap_speedup") else "")
    print(f"| {name} | {r['compile_seconds']} | {r['epoch_seconds']} | {f'{ref:.3f}' if ref else ''} | {ratio} | "
          f"{r['validation_seconds']} | {r['peak_rss_mb']} | {r.get('first_layer_matmul_seconds', '')} |")
r = json.loads((Path(sys.argv[1]) / "seed_scaling.json").read_text())
print(f"\nseed_scaling ({r['hidden_layers']} hidden layers of {r['n_hid']}, batch norm + LIF forward and backward; "
      f"{r['hidden_layers_share_of_step']:.0%} of the single-seed step of {r['step_seconds'] * 1e3:.1f} ms):")
for g in r["groups"]:
    print(f"  {g['seeds_side_by_side']} seeds side by side: {g['layer_seconds'] * 1e3:.2f} ms per layer "
          f"({g['width_ratio']}x one seed; vmapped: {g['layer_seconds_vmapped'] * 1e3:.2f} ms), "
          f"speed-up over one after another at most {g['speedup_bound']}x")
PY
