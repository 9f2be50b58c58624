#!/usr/bin/env bash
# The GPU check: run from the repository root on a machine with an NVIDIA GPU:
#     bash benchmarks/gpu_check.sh            # figures land in $OUT (or ./gpu_results)
# It installs CUDA JAX if needed, runs the golden tests on the GPU, then benchmarks on
# synthetic SHD- and SSC-sized data: SHD 4x32, SSC 4x128 at 100 steps, and 10 vmapped
# MTS-XOR seeds against the same seeds one after another (float32 and bfloat16).
# Five files come back: gpu_check.log (everything printed) and one JSON per benchmark.
# A benchmark that fails or runs out of its time is reported and the next one still runs.
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
python3 -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null || \
    python3 -m pip install --quiet -r requirements/requirements_gpu.txt 2>&1 | tee -a "$log"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
# faithfulness first: the golden cases of the published code, on the GPU
echo "== golden tests" | tee -a "$log"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_golden.py 2>&1 | tail -3 | tee -a "$log"
bench() {
    name="$1"; shift
    echo "== $name: benchmark.py $*" | tee -a "$log"
    timeout 240 python3 benchmarks/benchmark.py --out "$out/$name.json" "$@" 2>&1 | tail -25 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || echo "== $name failed or timed out" | tee -a "$log"
}
bench shd_4x32 --dataset_name shd --n_layers 4 --n_hid 32 --epochs 3
bench ssc_4x128 --dataset_name ssc --n_layers 4 --n_hid 128 --nb_steps 100 --epochs 2
bench mts_xor_10_seeds --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 3 --compare_sequential
bench mts_xor_10_seeds_bf16 --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 3 --set matmul_dtype=bfloat16
