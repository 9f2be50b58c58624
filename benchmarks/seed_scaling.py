"""How much can training several seeds in one program save on this machine? An upper bound.

    python3 benchmarks/seed_scaling.py --n_layers 4     # MTS-XOR, 10 seeds
    python3 benchmarks/seed_scaling.py --dataset_name shd --n_layers 4 --n_hid 32 --seeds 4

Whatever layout a batched program gives its seeds, it still runs every seed's per-neuron
work: the hidden layers' batch norm and LIF loop over time. The cheapest form that work can
take is G seeds side by side in the feature axis (one batch norm and one loop over G * H
neurons, no layout copies), group after group. This script times, forward and backward,
the project's own `batch_norm` then `lif_scan` over [T, B, G * H] currents for group sizes
G = 1, 2, 3, 5 and S, and the whole single-seed train step (the program `train_hsnn` runs,
`sweep_step_times.step_times`, timed first); for comparison, also the same G seeds as
`jax.vmap` runs them ([G, T, B, H]). Every figure is the fastest of `--repeats` calls after
two warm-up calls: this virtual machine has slow spells that a median of 20 calls does not
always hide.

If every other operation of the batched program (matmuls, output layer, loss, optimizer,
copies) cost nothing, a group of G seeds would still take the hidden layers' work at width
G * H, so its speed-up over G single-seed steps one after another is at most

    bound(G) = G * step(1 seed) / (hidden layers * layer(G * H)),

and S seeds in one program, however grouped, are at most max_G bound(G) times faster than
the same seeds one after another. Prints and writes (`--out`) the times and bounds as JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import add_config_arguments, build_config  # noqa: E402
from sweep_step_times import step_times  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default="mts_xor", choices=["mts_xor", "shd"])
    parser.add_argument("--seeds", type=int, default=10, help="seeds in one program (S); groups of 1, 2, 3, 5 and S side by side are timed")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure (the fastest counts)")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def best_seconds(fn, *args, repeats):
    """Fastest wall time of fn(*args) over `repeats` calls after two warm-up calls (compilation)."""
    import jax
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def per_neuron_seconds(cfg, seeds, repeats):
    """Forward + backward of one hidden layer's per-neuron work, batch norm then the LIF loop,
    as the train step computes it (same functions, surrogate, threshold; the normalised
    currents are an intermediate, which the loop overwrites), for `seeds` seeds: side by side
    over [T, B, seeds * H] currents, and as the vmapped program runs them ([seeds, T, B, H])."""
    import jax
    import jax.numpy as jnp
    from models import lif_scan
    from utils_normalization import batch_norm
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    shape = (seeds, cfg.nb_steps, cfg.batch_size, cfg.n_hid)
    I = jax.random.normal(k1, shape, jnp.float32)
    g = jax.random.normal(k2, shape, jnp.float32)  # a cotangent with no zeros to skip
    alpha = jnp.full(shape[:1] + shape[-1:], 0.9, jnp.float32)
    scale, bias = jnp.ones_like(alpha), jnp.ones_like(alpha)

    def fwd_bwd(I, scale, bias, alpha, g):
        S, vjp = jax.vjp(lambda *a: lif_scan(batch_norm(*a[:3]), a[3], cfg.surrogate, cfg.v_thr),
                         I, scale, bias, alpha)
        return S, vjp(g)

    def side_by_side(x):  # [G, T, B, H] -> [T, B, G * H], [G, H] -> [G * H]
        return jnp.moveaxis(x, 0, -2).reshape(*x.shape[1:-1], -1) if x.ndim == 4 else x.reshape(-1)

    wide = [side_by_side(x) for x in (I, scale, bias, alpha, g)]
    return (best_seconds(jax.jit(fwd_bwd), *wide, repeats=repeats),
            best_seconds(jax.jit(jax.vmap(fwd_bwd)), I, scale, bias, alpha, g, repeats=repeats))


def main(argv=None):
    args = parse_args(argv)
    import runtime
    cfg = build_config(args)
    runtime.configure_jax(compilation_cache=False, cfgs=[cfg])
    import jax
    S, H, n_hidden = args.seeds, cfg.n_hid, cfg.n_hidden_layers
    groups = sorted({g for g in (1, 2, 3, 5) if g < S} | {S})
    # the step first: after the wide programs below, the same step ran up to 2x slower in
    # the same process (as in benchmark.py, which times sequential seeds before vmapped ones)
    step = min(step_times(cfg, args.repeats)[1:])  # the first call compiles
    times = {g: per_neuron_seconds(cfg, g, args.repeats) for g in groups}
    layer = {g: t[0] for g, t in times.items()}
    bound = {g: g * step / (n_hidden * layer[g]) for g in groups}
    best = max(groups, key=bound.get)
    result = dict(
        dataset_name=cfg.dataset_name, backend=jax.default_backend(), seeds=S, n_hid=H,
        hidden_layers=n_hidden, currents_shape=[cfg.nb_steps, cfg.batch_size, H],
        step_seconds=round(step, 6), hidden_layers_share_of_step=round(n_hidden * layer[groups[0]] / step, 3),
        groups=[dict(seeds_side_by_side=g, layer_seconds=round(layer[g], 6),
                     width_ratio=round(layer[g] / layer[groups[0]], 2), speedup_bound=round(bound[g], 2),
                     layer_seconds_vmapped=round(times[g][1], 6))
                for g in groups],
        best_group=best, speedup_bound=round(bound[best], 2))
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
