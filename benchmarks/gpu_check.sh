#!/usr/bin/env bash
# One prepared GPU check (issue [5/5]): run from the repository root on a machine with an
# NVIDIA GPU, e.g. through the workplace's device tool:
#     bash benchmarks/gpu_check.sh            # figures land in $OUT (or ./gpu_results)
# It installs CUDA JAX if needed, then benchmarks on synthetic SHD- and SSC-sized data:
#   shd 4x32 (target <= 0.25 s/epoch), SSC 4x128 at 100 steps (target <= 3 s/epoch),
#   10 vmapped MTS-XOR seeds against 10 sequential ones (target >= 5x throughput).
set -euo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null || \
    python3 -m pip install --quiet -r requirements/requirements_gpu.txt
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/devices.txt"
bench() { name="$1"; shift; timeout 240 python3 benchmarks/benchmark.py --out "$out/$name.json" "$@" \
          2>&1 | tee "$out/$name.log" | tail -20; }
bench shd_4x32 --dataset_name shd --n_layers 4 --n_hid 32 --epochs 3 --events
bench ssc_4x128 --dataset_name ssc --n_layers 4 --n_hid 128 --nb_steps 100 --epochs 2
bench mts_xor_10_seeds --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 3 --compare_sequential
bench mts_xor_10_seeds_bf16 --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 3 --set matmul_dtype=bfloat16
