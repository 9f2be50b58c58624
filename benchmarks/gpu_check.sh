#!/usr/bin/env bash
# The GPU check: from a fresh clone, on a machine with one NVIDIA GPU (about 15 minutes):
#
#     bash benchmarks/gpu_check.sh [OUT]            # everything lands in OUT (default gpu_results/)
#
# 1. a virtual environment of its own (OUT/venv, or $HSNN_GPU_VENV) with
#    requirements/requirements_gpu.txt: no system Python is touched;
# 2. the versions and the device;
# 3. the golden cases of the published code, on the GPU, in one process: at
#    --matmul_precision highest (every case must pass), then at the default precision, which
#    multiplies float32 as TF32 on Ampere and later GPUs, as the published code did there:
#    failures are expected, counted and reported, not hidden;
# 4. benchmarks/benchmark.py for each workload family (MTS-XOR 10 seeds vmapped and one after
#    another, SHD 3x32 and 3x128, SSC 3x128 at 100 steps, the convolutional SHD network with its
#    frequency shift), each with its peak GPU memory, while nvidia-smi samples the GPU's
#    utilisation and memory every 0.5 s (gpu_usage.csv);
# 5. the loops' unrolling (--scan_unroll 1, 4, 8) on MTS-XOR and SHD;
# 6. summary.md: one table of all of it (benchmarks/gpu_summary.py).
# Stops at the first failure of steps 1-3 (set -e); a benchmark that fails is reported and the
# next one runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_results}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
venv="${HSNN_GPU_VENV:-$out/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements/requirements_gpu.txt
echo "== versions and device"
python -c "import sys, jax, jaxlib, numpy, optax; print('python', sys.version.split()[0], '| jax', jax.__version__, \
'| jaxlib', jaxlib.__version__, '| numpy', numpy.__version__, '| optax', optax.__version__); print(jax.devices())"
python -c "import jax; assert jax.default_backend() == 'gpu', 'JAX sees no GPU: ' + jax.default_backend()"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
export JAX_PLATFORMS=cuda  # tests/conftest.py would otherwise choose the CPU

echo "== golden tests at --matmul_precision highest (all must pass)"
HSNN_GOLDEN_PRECISION=highest python -m pytest -q -n 0 -p no:cacheprovider tests/test_golden.py \
    --junitxml "$out/golden_highest.xml"
echo "== golden tests at the default precision (TF32 products: failures expected)"
HSNN_GOLDEN_PRECISION=default python -m pytest -q -n 0 -p no:cacheprovider tests/test_golden.py \
    --junitxml "$out/golden_default.xml" | tail -15 || true

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$out/gpu_usage.csv" &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
bench() {
    name="$1"; shift
    echo "== $name: benchmark.py $*"
    if ! timeout 300 python benchmarks/benchmark.py --out "$out/$name.json" "$@" | tail -12; then
        echo "== $name failed or ran out of its 300 s"
    fi
}
bench mts_xor_10_seeds --dataset_name mts_xor --n_layers 4 --seeds 10 --epochs 3 --compare_sequential
bench shd_3x32 --dataset_name shd --n_layers 4 --n_hid 32 --epochs 3
bench shd_3x128 --dataset_name shd --n_layers 4 --n_hid 128 --epochs 3
bench ssc_3x128 --dataset_name ssc --n_layers 4 --n_hid 128 --nb_steps 100 --epochs 1
bench shd_conv --dataset_name shd --set convolution=true --epochs 2
for unroll in 1 4 8; do
    bench "mts_xor_unroll$unroll" --dataset_name mts_xor --n_layers 4 --epochs 3 --set "scan_unroll=$unroll"
    bench "shd_3x32_unroll$unroll" --dataset_name shd --n_layers 4 --n_hid 32 --epochs 3 --set "scan_unroll=$unroll"
done
kill "$sampler" 2>/dev/null || true
python benchmarks/gpu_summary.py "$out" | tee "$out/summary.md"
