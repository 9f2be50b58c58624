"""Training speed of one configuration, offline, in one process.

    python3 benchmarks/benchmark.py --dataset_name shd --n_layers 4 --n_hid 32
    python3 benchmarks/benchmark.py --dataset_name mts_xor --n_layers 4 --seeds 10

SHD and SSC use synthetic spike counts of the real sizes (6,524 training samples for SHD
after its 80/20 split, 75,466 for SSC; 700 channels; `--density` of the bins non-zero);
MTS-XOR uses its generator. Prints and writes as JSON (`--out`): compile time (the first
training epoch over a steady one), steady-state seconds per training epoch and per validation pass (wall time
and the process's CPU time: on a shared machine the CPU time is the steadier figure),
samples per second, peak resident memory, the time of the first layer's dense matmul alone
(forward and weight gradient, one epoch of batches) with the epoch's ratio to it, and the
roofline of a train step (`roofline`): its matmul FLOP from the shapes, its estimated
memory traffic, and this machine's measured float32 matmul peak and memory bandwidth, the
two floors they give and how close the step comes. `--seeds N` trains N seeds as one
vmapped program (the sweeps' default) and, with `--compare_sequential`, also N seeds one
after another.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


SIZES = {"shd": (6524, 1632), "ssc": (75466, 9981)}  # (train, validation) samples


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default="shd", choices=["shd", "ssc", "mts_xor"])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    parser.add_argument("--seeds", type=int, default=1, help="seeds trained as one vmapped program")
    parser.add_argument("--compare_sequential", action="store_true",
                        help="also time the same seeds trained one after another")
    parser.add_argument("--density", type=float, default=0.07, help="fraction of non-zero SHD/SSC bins")
    parser.add_argument("--n_train", type=int, default=None, help="training samples (default: real size)")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def add_config_arguments(parser):
    """--out, --set and the shape flags that `build_config` reads."""
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other Config field, e.g. --set nb_steps=200")
    for field in ("n_layers", "n_hid", "batch_size", "nb_steps"):
        parser.add_argument(f"--{field}", type=int, default=None)


def build_config(args):
    """main.py's configuration of --dataset_name with the shape flags and --set overrides."""
    from cli import parse_field
    from utils_initialization import make_config
    overrides = {f: getattr(args, f) for f in ("n_layers", "n_hid", "batch_size", "nb_steps")
                 if getattr(args, f) is not None}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = parse_field(key, value)
    return make_config(args.dataset_name, **overrides)


def synthetic_split(n, cfg, density, rng):
    """Random spike counts held as SHD/SSC's are, as events (utils_dataset.SpikeCounts: the
    batches are built from them as in training, frequency shift included when --set
    freq_shift=...), about `density` of the [T, 700] bins of a sample non-zero; labels in
    range."""
    import utils_dataset
    cells = cfg.nb_steps * cfg.n_in
    per_sample = rng.binomial(cells, density, n)
    ptr = np.concatenate([[0], np.cumsum(per_sample)])
    flat = np.empty(ptr[-1], np.uint32)
    for i in range(n):  # distinct cells per sample, sorted as the binning writes them
        flat[ptr[i]:ptr[i + 1]] = np.sort(rng.choice(cells, per_sample[i], replace=False))
    counts = np.ones(ptr[-1], np.uint8)
    augment = utils_dataset.FrequencyShift(cfg.freq_shift) if cfg.freq_shift > 0 else None
    return utils_dataset.Split(utils_dataset.SpikeCounts(ptr, flat, counts, (cfg.nb_steps, cfg.n_in)),
                               rng.integers(0, cfg.n_out, n), augment)


def build_task(cfg, args):
    import utils_dataset
    if cfg.dataset_name == "mts_xor":
        return utils_dataset.load_task(cfg)
    n_train, n_valid = SIZES[cfg.dataset_name]
    rng = np.random.default_rng(cfg.seed)
    train = synthetic_split(args.n_train or n_train, cfg, args.density, rng)
    valid = synthetic_split(n_valid, cfg, args.density, rng)
    return utils_dataset.Task(train, valid, valid)


def time_epochs(cfg, tasks, n_epochs, steps=None, cpu=None):
    """Seconds of the first training epoch, of each further one, and of the validation
    passes; the programs are the ones train_hsnn uses. `cpu`, a list, receives each training
    epoch's CPU seconds (all threads of the process)."""
    import jax
    import jax.numpy as jnp
    import training
    optimizer = training.make_optimizer(cfg)
    steps = steps or training.make_steps(cfg, optimizer, task_mask(tasks[0]), training.device_data(tasks, cfg))
    cfgs = [cfg.replace(seed=s) for s in range(len(tasks))]
    runs = [training._init_run(c, optimizer, None, None) for c in cfgs]
    params = training._stack([r.params for r in runs])
    opt_state = training._stack([r.opt_state for r in runs])
    keys = jnp.stack([r.key_dropout for r in runs])
    epochs, valids = [], []
    for epoch in range(n_epochs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        params, opt_state, _ = training._train_epoch(steps, params, opt_state, tasks, cfgs, epoch, keys,
                                                     progress=False)
        jax.block_until_ready(params)
        epochs.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        training.evaluate(steps, params, [t.valid for t in tasks], cfg, name="valid")
        valids.append(time.perf_counter() - t0)
    return epochs, valids


def task_mask(task):
    import jax.numpy as jnp
    return None if task.score_mask is None else jnp.asarray(task.score_mask)


def time_first_layer_matmul(cfg, task):
    """One epoch of the first layer's dense matmul alone: forward x W and weight gradient."""
    import jax
    import jax.numpy as jnp
    import utils_dataset
    W = jnp.zeros((cfg.n_in, cfg.n_hid), jnp.float32)

    @jax.jit
    def fwd_and_grad(W, x_TBI):
        x2 = x_TBI.reshape(-1, x_TBI.shape[-1])
        I = x2 @ W
        return I, x2.T @ I  # I and a weight gradient of the same shape and cost

    # float32 inputs already in memory, as the train step receives them (runtime.HostBatches);
    # the first four batches stand in for the full ones, the last one for itself
    n = utils_dataset.n_batches(task.train, cfg.batch_size)
    full, last = [], None
    for b, (x, _) in enumerate(utils_dataset.iterate_batches(task.train, cfg.batch_size)):
        if b < min(4, n - 1):
            full.append(jnp.asarray(x))
        elif b == n - 1:
            last = jnp.asarray(x)
    batches = [full[b % len(full)] for b in range(n - 1)] + [last]  # a one-batch set: the last alone
    for x in full[:1] + [last]:
        jax.block_until_ready(fwd_and_grad(W, x))
    t0 = time.perf_counter()
    for x in batches:
        out = fwd_and_grad(W, x)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


# --- the roofline ------------------------------------------------------------------------------
def step_flop(cfg) -> float:
    """FLOP of the matrix products of one training step, from the shapes (2 per multiply-add):
    each layer's input-current product (dense, or the convolution's K taps), recurrent product
    and output product, forward and the two backward products (input and weight gradients),
    but for the first layer's input gradient, which is never computed. Elementwise work (the
    neuron loops, normalisation, dropout, the optimizer) is left out: it is small in FLOP and
    shows in the memory traffic instead."""
    from utils_initialization import conv_hierarchy, layer_sizes
    rows = cfg.nb_steps * cfg.batch_size
    kernels, _ = conv_hierarchy(cfg)
    sizes, total = layer_sizes(cfg), 0.0
    for i in range(cfg.n_layers):
        taps = kernels[i] if cfg.convolution and i < cfg.n_layers - 1 else 1
        products = 2 if i == 0 else 3  # forward, weight gradient (, input gradient)
        total += products * 2 * rows * taps * sizes[i] * sizes[i + 1]
        if cfg.recurrent and i < cfg.n_layers - 1:
            total += 3 * 2 * rows * sizes[i + 1] ** 2
    return total


# passes over each hidden layer's [T, B, H] float32 arrays in a train step: the current and its
# normalised form, the membrane and the spikes forward; their gradients and the normalisation's
# reductions backward (about 12 reads or writes of an array of that size)
HIDDEN_PASSES = 12


def step_bytes(cfg) -> float:
    """An estimate of the bytes a train step must move at least once: the float32 input batch
    written into its buffer and read by the first layer's forward and weight-gradient products
    (3 passes), and HIDDEN_PASSES passes over each hidden layer's [T, B, H] arrays."""
    rows = cfg.nb_steps * cfg.batch_size
    return 4 * rows * (3 * cfg.n_in + HIDDEN_PASSES * cfg.n_hid * (cfg.n_layers - 1))


COPY_ELEMENTS = 64 * 2 ** 20  # float32: the 256 MiB array machine_peaks reads and writes


def memory_pass():
    """The jitted pass machine_peaks times for the memory bandwidth: every element read,
    scaled and written back over its input (donated), so that no call allocates."""
    import jax
    return jax.jit(lambda v: v * 1.0001, donate_argnums=0)


def machine_peaks(size=2048, repeats=5):
    """(float32 matmul GFLOP/s, memory GB/s) of this machine, measured now with the jitted
    programs the step is made of: a [size, size] x [size, size] product, and a pass over a
    256 MiB array (read and write). The pass writes over its input (donated): a fresh 256 MiB
    output would be mapped and faulted in at every call wherever glibc's heap is not kept
    (runtime.keep_heap), and the page faults would be measured instead of the memory."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    scale = memory_pass()
    held = [jnp.ones(COPY_ELEMENTS, jnp.float32)]

    def scale_in_place():
        held[0] = jax.block_until_ready(scale(held[0]))

    def shortest(call) -> float:
        call()  # compiled and warm
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return min(times)

    best = {"matmul": shortest(lambda: jax.block_until_ready(matmul(a))), "copy": shortest(scale_in_place)}
    return 2 * size ** 3 / best["matmul"] / 1e9, 2 * COPY_ELEMENTS * 4 / best["copy"] / 1e9


def roofline(cfg, step_seconds: float, n_seeds: int = 1) -> dict:
    """The step against this machine's limits: achieved GFLOP/s and its fraction of the
    measured matmul peak, and the step's time over each floor (compute: FLOP / peak; memory:
    bytes / bandwidth)."""
    flop, moved = n_seeds * step_flop(cfg), n_seeds * step_bytes(cfg)
    peak, bandwidth = machine_peaks()
    compute_floor, memory_floor = flop / (peak * 1e9), moved / (bandwidth * 1e9)
    return dict(step_gflop=round(flop / 1e9, 4), step_mbytes=round(moved / 1e6, 1),
                step_seconds=round(step_seconds, 5), achieved_gflops=round(flop / step_seconds / 1e9, 1),
                peak_gflops=round(peak, 1), bandwidth_gbs=round(bandwidth, 1),
                fraction_of_peak=round(flop / step_seconds / 1e9 / peak, 3),
                compute_floor_seconds=round(compute_floor, 5), memory_floor_seconds=round(memory_floor, 5),
                over_compute_floor=round(step_seconds / compute_floor, 2),
                over_memory_floor=round(step_seconds / memory_floor, 2))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mb():
    """The accelerator's peak memory in use [MB] (None on the CPU, where it is the host's)."""
    import jax
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"] / 2 ** 20


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    import runtime
    import training
    cfg = build_config(args)
    runtime.configure_jax(compilation_cache=False, cfgs=[cfg])  # measure compilation, not the cache
    import jax
    tasks = [build_task(cfg.replace(seed=s), args) for s in range(args.seeds)]
    sequential = None
    if args.compare_sequential and args.seeds > 1:
        # first, in a process that has run nothing else: after the large vmapped program the
        # same single-seed programs were measured up to 2x slower
        sequential = [time_epochs(cfg.replace(seed=s), [t], args.epochs)[0] for s, t in enumerate(tasks)]
    steps = training.make_steps(cfg, training.make_optimizer(cfg), task_mask(tasks[0]), training.device_data(tasks, cfg))
    cpu = []
    epochs, valids = time_epochs(cfg, tasks, args.epochs, steps, cpu)
    steady = float(np.median(epochs[1:]))
    # the compilation of the programs training runs (first epoch over a steady one)
    compile_s = epochs[0] - steady
    n_train = len(tasks[0].train)
    n_steps = -(-n_train // cfg.batch_size)
    result = dict(
        config={k: v for k, v in cfg.to_dict().items()}, seeds=args.seeds, backend=jax.default_backend(),
        device=str(jax.devices()[0]), n_train=n_train,
        compile_seconds=round(compile_s, 3),
        first_epoch_seconds=round(epochs[0], 3), epoch_seconds=round(steady, 4),
        epoch_seconds_all=[round(e, 4) for e in epochs[1:]], epoch_cpu_seconds=round(float(np.median(cpu[1:])), 4),
        validation_seconds=round(float(np.median(valids[1:])), 4),
        samples_per_second=round(args.seeds * n_train / steady, 1))
    if args.dataset_name != "mts_xor" or cfg.n_in > 40:
        matmul = time_first_layer_matmul(cfg, tasks[0])
        result.update(first_layer_matmul_seconds=round(matmul, 4),
                      epoch_to_first_layer_matmul=round(steady / args.seeds / matmul, 2))
    if sequential is not None:
        seq = float(sum(np.median(e[1:]) for e in sequential))
        result.update(sequential_epoch_seconds=round(seq, 4), vmap_speedup=round(seq / steady, 2))
    result["data_on_device"] = steps.data is not None
    result["roofline"] = roofline(cfg, steady / n_steps, args.seeds)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result.update(device_peak_mb=device_peak_mb(), started=started, ended=time.time())
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
