"""Seconds per training epoch of each sweep's network shape on this machine, for the sweep
durations of docs/performance.md. The data sets of SHD/SSC/MNIST need not be present: the
train step is timed on random spikes of the task's shape (the step's cost does not depend on
the data), and an epoch is its number of batches times the step (validation adds about
10-20 %).

    python3 benchmarks/sweep_step_times.py [--steps 5] [--sweeps hSNN_Figure_2c ...] [--out FILE]

`--out` writes the table as JSON (benchmarks/results/cpu_2core/sweep_step_times.json is what
`sweep.py --list` prints as each sweep's estimated duration).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# training samples per epoch of each task (SHD: 80 % of the 8156 training recordings)
TRAIN_SAMPLES = {"mts_xor": 20 * 512, "shd": 6525, "ssc": 75466, "mnist": 50000, "s-mnist": 50000}


def step_times(cfg, n_steps, steps=None):
    """Seconds of each of n_steps + 1 calls of the jitted train step of one seed (`steps`, or
    the one train_hsnn builds) on random spikes of the task's shape; the first call includes
    compilation if the step had not run yet."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import training
    from models import init_params
    optimizer = training.make_optimizer(cfg)
    mask = jnp.ones(cfg.nb_steps, bool) if cfg.decoder == "vmem_time" else None
    steps = steps or training.make_steps(cfg, optimizer, mask)
    params = init_params(jax.random.PRNGKey(0), cfg)
    params, opt_state = training._stack([params]), training._stack([optimizer.init(params)])  # one seed
    rng = np.random.default_rng(0)
    # in the dtype runtime.HostBatches hands the step (float32 on the CPU, the stored uint8
    # counts on an accelerator), so that the program timed is the one that trains
    import runtime
    dtype = runtime.HostBatches().dtype or np.uint8
    x = jnp.asarray((rng.random((1, cfg.nb_steps, cfg.batch_size, cfg.n_in)) < 0.05).astype(dtype))
    y_shape = (1, cfg.batch_size, cfg.nb_steps) if cfg.decoder == "vmem_time" else (1, cfg.batch_size)
    y = rng.integers(0, cfg.n_out, y_shape).astype(np.int32)
    times = []
    for i in range(n_steps + 1):
        t0 = time.perf_counter()
        batch = training.Batch(x, y, jnp.int32(i))
        params, opt_state, metrics = steps.train(params, opt_state, batch, jax.random.PRNGKey(i)[None],
                                                 jnp.int32(0), jnp.float32(0.01))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return times


def step_seconds(cfg, n_steps):
    """Median seconds of one jitted train step after compilation."""
    import numpy as np
    return float(np.median(step_times(cfg, n_steps)[1:]))


def network_size(cfg):
    """The sweep's largest network is timed: the estimate is an upper bound."""
    return (cfg.n_layers - 1) * cfg.n_hid * (2 if cfg.recurrent else 1) * cfg.nb_steps


def main():
    import sweep_definitions
    from runtime import configure_jax
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sweeps", nargs="*")
    parser.add_argument("--out", help="also write the table as JSON to this file")
    args = parser.parse_args()
    table = {}
    definitions = sweep_definitions.load_definitions()
    names = args.sweeps or list(definitions)
    # the allocator as a sweep of these gets it (runtime.large_step); time MTS-XOR's sweeps and
    # SHD's in separate calls (--sweeps) for each its own
    configure_jax(compilation_cache=False, cfgs=[sweep_definitions.make_run_config(r.overrides, 0)
                                                 for name in names for r in sweep_definitions.expand(definitions[name])])
    print("sweep | shape timed | s/step | s/epoch | runs x epochs | hours (1 process)")
    for name in names:
        runs = sweep_definitions.expand(definitions[name])
        widest = max(runs, key=lambda r: network_size(sweep_definitions.make_run_config(r.overrides, 0)))
        cfg = sweep_definitions.make_run_config(widest.overrides, 0)
        per_step = step_seconds(cfg, args.steps)
        per_epoch = per_step * -(-TRAIN_SAMPLES[cfg.dataset_name] // cfg.batch_size)
        total = sum(sweep_definitions.make_run_config(r.overrides, 0).n_epochs for r in runs)
        shape = f"{cfg.n_layers - 1}x{cfg.n_hid}{' conv' if cfg.convolution else ''}{' rec' if cfg.recurrent else ''}, T={cfg.nb_steps}"
        print(f"{name} | {shape} | {per_step:.3f} | {per_epoch:.1f} | {len(runs)} x {total // len(runs)} | "
              f"{per_epoch * total / 3600:.1f}", flush=True)
        table[name] = dict(shape=shape, s_per_step=round(per_step, 4), s_per_epoch=round(per_epoch, 2), runs=len(runs),
                           epochs_per_run=total // len(runs), hours=round(per_epoch * total / 3600, 2))
    if args.out:
        about = ("Seconds per training step and epoch of each sweep's widest network, one process, measured by "
                 "benchmarks/sweep_step_times.py; hours = the epochs of all runs x seconds per epoch (validation adds "
                 "10-20 %). sweep.py --list prints these as each sweep's estimated duration.")
        Path(args.out).write_text(json.dumps({"_about": about, "sweeps": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
