"""Training: loss, the published optimizer, one jitted train step, evaluation, and the run
folder with its per-epoch checkpoint.

`train_hsnn(cfg)` is main.py's entry point and `train_runs(cfgs)` sweep.py's: both train
runs that share one compiled program in vmapped programs (a single run is a group of one;
on the CPU every seed is a group of its own, see `seeds_per_group`). Randomness is a pure
function of (seed, epoch): the data order of epoch e comes from numpy's
`default_rng([seed, e])` and the dropout keys from `fold_in(key_dropout, e)`, so a run
resumed from the checkpoint of epoch e continues exactly as an uninterrupted run.
"""

import collections
import concurrent.futures as cf
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import run_folder
import runtime
import utils_dataset
from models import decode, forward_trace, init_params, param_rules, shift_channels
from utils_initialization import Config, hierarchy_notes, tau_from_alpha
from utils_io import FileError

LOG_EPS = 1e-12          # inside log(yhat) of the cross-entropy
ALPHA_HIGH = 0.95        # decays above this are penalised ...
ALPHA_HIGH_WEIGHT = 0.1  # ... with this weight
ALPHA_GRAD_SCALE = 0.1   # train_alpha: hidden-layer decay gradients are scaled by this


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --- loss (M6 of docs/model.md) ------------------------------------------------------------
def safe_norm(arrays):
    """Euclidean norm over several arrays together; its gradient at 0 is 0, not NaN
    (the published code's norm of identical decays has a NaN gradient)."""
    sq = sum(jnp.sum(jnp.square(a)) for a in arrays)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def cross_entropy(yhat, y, n_out):
    """-mean(sum_c y_c log(yhat_c + 1e-12)); over batch (and time for vmem_time)."""
    onehot = jax.nn.one_hot(y, n_out, dtype=yhat.dtype)
    return -jnp.mean(jnp.sum(onehot * jnp.log(yhat + LOG_EPS), axis=-1))


def regularizers(params, hidden: list, cfg: Config) -> dict:
    """Every non-CE term (M6), reported separately. Which parameters each term covers is
    declared with the parameter (models.param_rules): the L2 norm of the weights, the
    published penalties of the membrane decays."""
    rules = param_rules(cfg)
    decays = [value for layer in params for name, value in layer.items() if rules[name].penalised]
    terms = {
        "alpha_high": ALPHA_HIGH_WEIGHT * safe_norm([jax.nn.relu(a - ALPHA_HIGH) for a in decays]),
        "alpha_sd": cfg.l2_alpha_sd * safe_norm([a - jnp.mean(a) for a in decays]),
    }
    if cfg.l2_lambda:
        terms["l2"] = cfg.l2_lambda * safe_norm([value for layer in params for name, value in layer.items()
                                                 if rules[name].l2])
    if cfg.freq_lambda:  # the hidden layers' mean firing rate; after dropout when training (published)
        rate = jnp.mean(jnp.stack(firing_rates([h.passed for h in hidden])))
        terms["firing_rate"] = cfg.freq_lambda * (cfg.target_fr - rate) ** 2
    return terms


def loss_fn(params, x_TBI, y, cfg: Config, key=None, train=False):
    """Total loss (M6) and (its terms, the measures, class probabilities) of a time-major batch.

    The terms add up to the loss; the measures (`MEASURES`) are what is watched beside it.
    Both are reduced over each epoch's batches for training, validation and test and reach
    metrics.json and W&B as they are, and the final ones runs.jsonl."""
    hidden, out_TBO = forward_trace(params, x_TBI.astype(jnp.float32), cfg, key, train)
    yhat = decode(out_TBO, cfg.decoder)
    terms = {"ce": cross_entropy(yhat, y, cfg.n_out), **regularizers(params, hidden, cfg)}
    return sum(terms.values()), (terms, measure(hidden, params, (x_TBI, y), train), yhat)


def firing_rates(spikes_TBH) -> list:
    """Each hidden layer's firing rate in spikes per neuron and sample."""
    return [S.sum(0).mean() for S in spikes_TBH]


# --- measures: what is watched beside the loss ---------------------------------------------------
class Measure(NamedTuple):
    """A quantity measured on every batch (training, validation and test).

    reads:   what it is computed from, any of: "spikes" (each hidden layer's spikes S),
             "passed" (the spikes as the next layer receives them: after dropout while
             training), "membranes" (each hidden layer's V), "params", "batch" ((x, y))
    compute: {what it reads: value} -> {name: value per batch} (under stop_gradient)
    reduce:  how the batches of an epoch combine (REDUCTIONS): "mean" (weighted by batch size),
             "max", "sum", or "fraction" (per unit counts summed over the whole data set,
             then the fraction of units whose count is 0)
    train:   measured on the training batches too (a pass over what it reads in every train
             step: on small networks a few % of the step), else on validation and test only"""
    reads: tuple
    compute: Callable
    reduce: str = "mean"
    train: bool = True


def per_layer(fn, arrays) -> dict:
    """{'L1': fn(layer 1's array), 'L2': ...}."""
    return {f"L{i + 1}": fn(a) for i, a in enumerate(arrays)}


# Each measure's names are '<key>_<name>': rate_L1, silent_L2, ...
MEASURES = {
    # spikes per neuron and sample, as the firing-rate loss counts them (after dropout, scaled)
    "rate": Measure(("passed",), lambda r: per_layer(lambda S: S.sum(0).mean(), r["passed"])),
    # the fraction of a layer's neurons that never spike over the whole data set
    "silent": Measure(("spikes",), lambda r: per_layer(lambda S: S.sum((0, 1)), r["spikes"]), "fraction", train=False),
    # the mean membrane potential (over time, samples and neurons)
    "vmem": Measure(("membranes",), lambda r: per_layer(jnp.mean, r["membranes"]), train=False),
}


class Reduction(NamedTuple):
    add: Callable    # (total so far or None, a batch's value, batch size) -> total
    final: Callable  # (one seed's total, samples) -> the epoch's number


REDUCTIONS = {
    "mean": Reduction(lambda t, v, n: (0.0 if t is None else t) + v * n, lambda t, n: float(t / n)),
    "sum": Reduction(lambda t, v, n: (0.0 if t is None else t) + v, lambda t, n: float(t)),
    "max": Reduction(lambda t, v, n: v if t is None else np.maximum(t, v), lambda t, n: float(t)),
    "fraction": Reduction(lambda t, v, n: (0.0 if t is None else t) + v, lambda t, n: float(np.mean(t == 0))),
}


def measure(hidden: list, params, batch, train: bool = False) -> dict:
    """{measure: {name: value}} of a batch, from what each measure reads (of a training batch,
    the measures declared `train`)."""
    inputs = dict(spikes=[h.spikes for h in hidden], passed=[h.passed for h in hidden],
                  membranes=[h.membranes for h in hidden], params=params, batch=batch)
    return {key: jax.lax.stop_gradient(m.compute({what: inputs[what] for what in m.reads}))
            for key, m in MEASURES.items() if m.train or not train}


def correct_counts(yhat, y, score_mask_T=None):
    """(number correct, number scored); per-step labels count only where score_mask."""
    hit = (jnp.argmax(yhat, axis=-1) == y).astype(jnp.float32)
    if score_mask_T is None:
        return hit.sum(), jnp.float32(hit.size)
    mask = jnp.broadcast_to(score_mask_T, hit.shape).astype(jnp.float32)
    return (hit * mask).sum(), mask.sum()


# --- optimizer -----------------------------------------------------------------------------
def learning_rate(cfg: Config, epoch: int) -> float:
    """Piecewise constant by epoch: lr until lr_start_decay, then x lr_decay at epochs
    lr_start_decay + 1, + 1 + every, ...; only when n_epochs > lr_start_decay + every."""
    if cfg.n_epochs <= cfg.lr_start_decay + cfg.lr_decay_every or epoch <= cfg.lr_start_decay:
        return cfg.lr
    n_decays = math.ceil((epoch - cfg.lr_start_decay) / cfg.lr_decay_every)
    return cfg.lr * cfg.lr_decay ** n_decays


def scale_by_epoch_adam(b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformationExtraArgs:
    """Adam whose bias correction uses the epoch, not the step, as the published code did:
    within epoch e the moments are divided by 1 - b^(e+1)."""

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731 (two buffers)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(grads, state, params=None, *, epoch, **extra):
        mu = optax.tree_utils.tree_update_moment(grads, state.mu, b1, 1)
        nu = optax.tree_utils.tree_update_moment_per_elem_norm(grads, state.nu, b2, 2)
        power = jnp.asarray(epoch, jnp.float32) + 1.0
        c1, c2 = 1.0 - b1 ** power, 1.0 - b2 ** power
        updates = jax.tree_util.tree_map(
            lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return updates, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: Config) -> optax.GradientTransformationExtraArgs:
    """Adam (published epoch-indexed, or standard optax) with the learning rate passed per
    step as `lr`, so that one compiled step serves every epoch of the schedule."""
    if cfg.optimizer == "published_adam":
        scale = scale_by_epoch_adam()
    else:
        scale = optax.with_extra_args_support(optax.scale_by_adam())

    def update(grads, state, params=None, *, epoch, lr):
        updates, state = scale.update(grads, state, params, epoch=epoch)
        return jax.tree_util.tree_map(lambda u: -lr * u, updates), state

    return optax.GradientTransformationExtraArgs(scale.init, update)


def decay_grad_scales(params, cfg: Config) -> list:
    """Per layer {name: gradient factor} of its decays (models.Param.decay): in hidden layers
    0.1 when the decay's Config flag trains it (train_alpha for the membranes), else 0; the
    output layer's decays 0 (fixed)."""
    rules, last = param_rules(cfg), len(params) - 1
    trained = lambda rule: bool(rule.trained_by) and getattr(cfg, rule.trained_by)  # noqa: E731
    return [{name: (ALPHA_GRAD_SCALE if i < last and trained(rules[name]) else 0.0)
             for name in layer if rules[name].decay} for i, layer in enumerate(params)]


def decay_grad_rule(grads, cfg: Config):
    """The decay-gradient rule: decays are fixed unless trained; then their gradients x 0.1 in
    the hidden layers, and the output layer's decay stays fixed."""
    return [dict(layer, **{name: layer[name] * scale for name, scale in scales.items()})
            for layer, scales in zip(grads, decay_grad_scales(grads, cfg))]


def freeze_fixed_decays(params, cfg: Config):
    """stop_gradient on the decays that `decay_grad_rule` zeroes, so that their gradients
    (a reduction over time x batch per layer) are not computed at all; same updates."""
    return [dict(layer, **{name: jax.lax.stop_gradient(layer[name]) for name, scale in scales.items() if scale == 0})
            for layer, scales in zip(params, decay_grad_scales(params, cfg))]


# --- compiled steps ------------------------------------------------------------------------
class Batch(NamedTuple):
    x_TBI: jax.Array   # inputs, time-major [T, B, I]
    y: jax.Array       # labels [B], or [B, T] with a label per step (MTS-XOR)
    index: jax.Array   # the batch's position in its epoch (with the epoch, it keys dropout)


class Metrics(NamedTuple):
    loss: jax.Array    # total loss of the batch (M6)
    measures: dict     # {measure: {name: value}} of MEASURES
    correct: jax.Array  # correct predictions (MTS-XOR: per scored step)
    scored: jax.Array  # predictions that count
    terms: dict = {}   # the loss terms: ce, alpha_high, alpha_sd; l2, firing_rate if used


class Steps(NamedTuple):
    """Jitted steps over a group of seeds: params, optimizer state, batches and keys carry a
    leading seed axis S (S = 1 for a single run). With the data held on the device (`data`:
    {split: DeviceSplit}), `train_on` and `evaluate_on` gather each batch inside the program
    from the batch's sample positions (and the frequency shift's draws)."""
    train: callable     # (params, opt_state, Batch, key_epoch, epoch, lr) -> (params, opt_state, Metrics)
    evaluate: callable  # (params, Batch) -> Metrics
    train_on: callable = None     # (params, opt_state, DeviceSplit, Picks, key_epoch, epoch, lr) -> same
    evaluate_on: dict = None      # {split: (params, DeviceSplit, Picks) -> Metrics}
    data: Optional[dict] = None   # {"train" | "valid" | "test": DeviceSplit}


class DeviceSplit(NamedTuple):
    """A split's data on the device: the input rows its samples come from ([N, T, I], held
    once for every seed that shares them, e.g. SHD's splits of one file; else [S, N, T, I]),
    each seed's sample positions among them [S, n] and labels [S, n] (or [S, n, T])."""
    X: jax.Array
    pos: jax.Array
    Y: jax.Array


class Picks(NamedTuple):
    """What selects a batch from a DeviceSplit, per seed: positions in the split [S, B], the
    frequency shift's size [S] and directions [S, B] (zeros without the augmentation), and
    the batch's place in its epoch."""
    idx: jax.Array
    shift: jax.Array
    up: jax.Array
    index: jax.Array


def make_step_fns(cfg: Config, optimizer, score_mask=None):
    """The pure single-seed train and evaluation steps; `score_mask` [T] marks the time steps
    that count for accuracy when every step has a label (MTS-XOR)."""
    def train_step(params, opt_state, batch: Batch, key_epoch, epoch, lr):
        key = jax.random.fold_in(key_epoch, batch.index)
        (loss, aux), grads = jax.value_and_grad(
            lambda p: loss_fn(freeze_fixed_decays(p, cfg), batch.x_TBI, batch.y, cfg, key, True),
            has_aux=True)(params)
        terms, measures, yhat = aux
        grads = decay_grad_rule(grads, cfg)
        updates, opt_state = optimizer.update(grads, opt_state, params, epoch=epoch, lr=lr)
        params = optax.apply_updates(params, updates)
        return params, opt_state, Metrics(loss, measures, *correct_counts(yhat, batch.y, score_mask), terms)

    def eval_step(params, batch: Batch):
        loss, (terms, measures, yhat) = loss_fn(params, batch.x_TBI, batch.y, cfg)
        return Metrics(loss, measures, *correct_counts(yhat, batch.y, score_mask), terms)

    return train_step, eval_step


def make_steps(cfg: Config, optimizer, score_mask=None, data: Optional[dict] = None) -> Steps:
    """Seeds vmapped into one program (purejaxrl style): per-seed parameters, batches and
    dropout keys; shared batch index, epoch and learning rate. With `data` (device_data), also
    the steps that gather their batches on the device."""
    return step_programs(cfg, optimizer, score_mask)(data)


def step_programs(cfg: Config, optimizer, score_mask=None):
    """`steps(data)`: make_steps for any data of this network, from one set of jitted
    programs. Data held alike (rows shared by the seeds or one set per seed) share a program,
    so a program is traced and compiled once for all data of its shapes: the validation and
    test splits', and those of later groups (`programs_of`)."""
    train_step, eval_step = make_step_fns(cfg, optimizer, score_mask)
    per_seed = Batch(0, 0, None)
    train = jax.vmap(train_step, in_axes=(0, 0, per_seed, 0, None, None))
    evaluate = jax.vmap(eval_step, in_axes=(0, per_seed))
    on_host = Steps(jax.jit(train, donate_argnums=(0, 1)), jax.jit(evaluate))
    augment = cfg.freq_shift > 0

    def gather(split: DeviceSplit, picks: Picks, shifted: bool):
        x_BTI = split.X[split.pos[picks.idx]]
        if shifted:
            x_BTI = shift_channels(x_BTI, picks.shift, picks.up)
        return Batch(x_BTI.transpose(1, 0, 2).astype(jnp.float32), split.Y[picks.idx], picks.index)

    def train_on(params, opt_state, split, picks, key_epoch, epoch, lr):
        return train_step(params, opt_state, gather(split, picks, augment), key_epoch, epoch, lr)

    def evaluate_on(params, split, picks):
        return eval_step(params, gather(split, picks, False))

    picks = Picks(0, 0, 0, None)
    programs = {}  # (train or evaluate, how the split is held): its jitted program

    def program(kind: str, split: DeviceSplit):
        held = DeviceSplit(None if split.X.ndim == 3 else 0, 0, 0)  # rows shared by the seeds, or one set per seed
        if (kind, held) not in programs:
            programs[kind, held] = (
                jax.jit(jax.vmap(train_on, in_axes=(0, 0, held, picks, 0, None, None)), donate_argnums=(0, 1))
                if kind == "train" else jax.jit(jax.vmap(evaluate_on, in_axes=(0, held, picks))))
        return programs[kind, held]

    def steps(data: Optional[dict] = None) -> Steps:
        if not data:
            return on_host
        return on_host._replace(train_on=program("train", data["train"]),
                                evaluate_on={name: program("evaluate", split) for name, split in data.items()
                                             if name != "train"},
                                data=data)
    return steps


PROGRAMS_KEPT = 4  # networks whose programs a process keeps (programs_of), the most recent
_programs = collections.OrderedDict()  # {(program_key, score mask): (optimizer, step_programs)}


def programs_of(cfg: Config, score_mask=None) -> tuple:
    """(optimizer, step_programs) of `cfg`'s network (program_key) and score mask, kept for
    the process: the groups that train one after another in it (a grid point's seeds on the
    CPU, a sweep's points that differ only in their initial parameters) neither trace nor
    compile their programs again. The PROGRAMS_KEPT most recent networks are kept."""
    mask = None if score_mask is None else np.asarray(score_mask)
    key = (program_key(cfg), None if mask is None else (mask.dtype.str, mask.shape, mask.tobytes()))
    if key in _programs:
        _programs.move_to_end(key)
    else:
        optimizer = make_optimizer(cfg)
        _programs[key] = (optimizer, step_programs(cfg, optimizer, None if mask is None else jnp.asarray(mask)))
        while len(_programs) > PROGRAMS_KEPT:
            _programs.popitem(last=False)
    return _programs[key]


def device_data(tasks, cfg: Config) -> Optional[dict]:
    """The seeds' splits held on the device ({split: DeviceSplit}) when `data_placement` asks
    for it, or when it is auto, the data fits runtime.DATA_SHARE of the free memory and the
    device is an accelerator or the step is large (runtime.large_step); else None (the
    batches are built on the host). On the CPU a small step's next batch is built by numpy
    while the step runs, on a core its loops over time leave idle, so it costs the step
    nothing, where gathering it inside the step does (docs/performance.md). Rows of one
    source (SHD's file, say) are held once for all seeds and splits that use them."""
    if cfg.data_placement == "host":
        return None
    if cfg.data_placement == "auto" and not (runtime.on_accelerator() or runtime.large_step(cfg)):
        return None
    parts = {name: [utils_dataset.data_source(getattr(t, name).X) for t in tasks] for name in ("train", "valid", "test")}
    sources = {key: rows for part in parts.values() for key, rows, _ in part}
    per_seed = {name: len({key for key, _, _ in part}) > 1 for name, part in parts.items()}
    sizes = {key: math.prod(rows.shape) * np.dtype(utils_dataset.dense(rows, [0]).dtype).itemsize
             for key, rows in sources.items()}
    if cfg.data_placement == "auto" and not runtime.data_fits(sum(sizes.values())):
        return None
    held = {key: jnp.asarray(utils_dataset.dense(rows)) for key, rows in sources.items()}
    out = {}
    for name, part in parts.items():
        X = jnp.stack([held[key] for key, _, _ in part]) if per_seed[name] else held[part[0][0]]
        out[name] = DeviceSplit(X, jnp.asarray(np.stack([pos for _, _, pos in part]).astype(np.int32)),
                                jnp.asarray(_stack([getattr(t, name).Y for t in tasks])))
    return out


def picks_of(plans, index: int) -> tuple:
    """(Picks, batch size) of one batch from each seed's batch_plan item (idx, draws)."""
    idx = np.stack([p[0] for p in plans]).astype(np.int32)
    shift = np.array([p[1][0] if p[1] is not None else 0 for p in plans], np.int32)
    up = np.stack([p[1][1] if p[1] is not None else np.zeros(len(p[0]), bool) for p in plans])
    return Picks(jnp.asarray(idx), jnp.asarray(shift), jnp.asarray(up), jnp.int32(index)), idx.shape[1]


class Tally:
    """Per-seed sums of a split's metrics over an epoch: the loss and its terms weighted by
    batch size, each measure by its reduction, the accuracy both over all scored predictions
    and as the mean of per-batch accuracies (how the published code reported validation and
    test accuracy)."""

    def __init__(self):
        self.samples, self.batches, self.loss, self.terms, self.measures, self.reduce = 0, 0, 0.0, {}, {}, {}
        self.correct, self.scored, self.batch_acc = 0.0, 0.0, 0.0

    def add(self, m: Metrics, size: int):
        m = jax.device_get(m)  # every number of the step in one transfer
        self.samples += size
        self.batches += 1
        self.loss = self.loss + np.asarray(m.loss) * size
        for name, value in m.terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + np.asarray(value) * size
        for key, values in m.measures.items():
            for name, value in values.items():
                full, reduce = f"{key}_{name}", MEASURES[key].reduce
                self.measures[full] = REDUCTIONS[reduce].add(self.measures.get(full), np.asarray(value), size)
                self.reduce[full] = reduce
        correct, scored = np.asarray(m.correct), np.asarray(m.scored)
        self.correct, self.scored = self.correct + correct, self.scored + scored
        self.batch_acc = self.batch_acc + correct / scored

    def mean_loss(self):
        return self.loss / self.samples

    def mean_terms(self, s: int) -> dict:
        return {name: float(value[s] / self.samples) for name, value in self.terms.items()}

    def final_measures(self, s: int) -> dict:
        """Seed s's measures over the epoch, each by its reduction."""
        return {name: REDUCTIONS[self.reduce[name]].final(total[s], self.samples)
                for name, total in self.measures.items()}


def _stack(items):
    """Stack pytrees (or numpy batches) along a new leading seed axis."""
    if isinstance(items[0], np.ndarray):
        return items[0][None] if len(items) == 1 else np.stack(items)
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *items)


def evaluate(steps: Steps, params, splits, cfg: Config, rngs=None, name: Optional[str] = None) -> Tally:
    """Per seed: the metrics over a whole split (the reported accuracy is the unweighted mean
    of the per-batch accuracies, as the published code reported it: a smaller last batch
    counts as much as a full one). A split marked `reshuffle` is evaluated in the order of
    that seed's generator in `rngs` (batch norm uses the evaluated batch's statistics, so the
    batches' composition matters). With the data on the device (`steps.data`, `name` the
    split's), the batches are gathered there from the same orders."""
    rngs = rngs or [None] * len(splits)
    if getattr(steps, "data", None) and name in steps.data:
        return evaluate_on_device(steps, params, splits, cfg, rngs, name)
    orders = [utils_dataset.iterate_batches(sp, cfg.batch_size, rng if sp.reshuffle else None,
                                            time_major=False, augment=False)
              for sp, rng in zip(splits, rngs)]
    tally, host, pending = Tally(), runtime.HostBatches(), None
    for batches in zip(*orders):
        x, y = host.put([b[0] for b in batches]), _stack([b[1] for b in batches])
        out = steps.evaluate(params, Batch(x, y, jnp.int32(0)))
        host.fence(out)
        if pending is not None:  # read one batch behind: the device computes this one meanwhile
            tally.add(*pending)
        pending = (out, y.shape[1])
    tally.add(*pending)
    return tally


def evaluate_on_device(steps: Steps, params, splits, cfg: Config, rngs, name: str) -> Tally:
    """`evaluate` of a split held on the device: the same orders, each batch gathered there."""
    plans = [utils_dataset.batch_plan(sp, cfg.batch_size, rng if sp.reshuffle else None, augment=False)
             for sp, rng in zip(splits, rngs)]
    tally, pending = Tally(), None
    for batch in zip(*plans):
        picks, size = picks_of(batch, 0)
        out = steps.evaluate_on[name](params, steps.data[name], picks)
        if pending is not None:  # read one batch behind
            tally.add(*pending)
        pending = (out, size)
    tally.add(*pending)
    return tally


def eval_rngs(cfgs, epoch: int, purpose: str):
    """One generator per seed for the evaluation order of `purpose` ('valid' or 'test') after
    `epoch` (the published loaders reshuffle at every pass)."""
    tag = {"valid": 0xE7A1, "test": 0x7E57}[purpose]
    return [np.random.default_rng([c.seed, epoch, tag]) for c in cfgs]


# --- the run -------------------------------------------------------------------------------
def median_tau_per_layer(params, cfg: Config) -> list:
    """Median time constant [s] of each hidden layer (clipped decays, as the model uses)."""
    return [float(np.median(tau_from_alpha(layer["alpha"], cfg.dt))) for layer in params[:-1]]


def tau_per_neuron(params, cfg: Config):
    """Every hidden neuron's time constant [s] per hidden layer (clipped decays, as the model
    uses), for runs that train them (Fig. 3 draws their distribution from the results table);
    None when the time constants are not trained."""
    if not cfg.train_alpha:
        return None
    return [np.atleast_1d(tau_from_alpha(layer["alpha"], cfg.dt)).tolist() for layer in params[:-1]]


def final_scalars(metrics: dict) -> dict:
    """Every final number of a finished run, by name, as runs.jsonl records it (so that a
    panel can plot any of them and a report rule can test one): the run's own numbers
    (test_acc, test_loss, best_valid_acc, best_epoch, seconds_total), its test terms and
    measures ('test_<name>'), and the best epoch's training and validation measures
    ('train_<name>', 'valid_<name>')."""
    out = {k: metrics[k] for k in ("test_acc", "test_loss", "best_valid_acc", "best_epoch", "seconds_total")
           if isinstance(metrics.get(k), (int, float))}
    best = metrics["epochs"][metrics["best_epoch"]] if metrics.get("epochs") else {}
    for prefix, group in (("test", metrics.get("test_terms")), ("test", metrics.get("test_measures")),
                          ("train", best.get("measures")), ("valid", best.get("valid_measures"))):
        out.update({f"{prefix}_{name}": value for name, value in (group or {}).items()})
    return out


def recurrent_spectra(params) -> Optional[dict]:
    """The absolute eigenvalues of each hidden layer's trained recurrent matrix, largest first
    (paper Fig. S6): of W_rec as stored ('stored', what the published notebook plotted) and
    with its diagonal zeroed ('masked', the matrix the forward pass uses). Writing
    tau dv/dt = -v + W_rec v as dv/dt = ((W_rec - I) / tau) v, a larger eigenvalue is a slower
    mode. None for a feed-forward network."""
    matrices = [np.asarray(layer["W_rec"], np.float64) for layer in params[:-1] if "W_rec" in layer]
    if not matrices:
        return None
    spectrum = lambda W: sorted(np.abs(np.linalg.eigvals(W)).tolist(), reverse=True)  # noqa: E731
    return dict(stored=[spectrum(W) for W in matrices],
                masked=[spectrum(W * (1.0 - np.eye(len(W)))) for W in matrices])


def progress_mode(progress):
    """How a run reports its progress: None (silently), 'lines' (one line per epoch) or
    'bars' (a progress bar through each epoch, then its line). True or 'bars' give bars only
    where the output is a terminal: in a log file (nohup, a cluster job, CI) bars would write
    every frame, so it gets the lines."""
    if not progress:
        return None
    terminal = sys.stdout.isatty() and sys.stderr.isatty()
    return "bars" if progress in (True, "bars") and terminal else "lines"


def train_hsnn(cfg: Config, run_dir=None, resume: bool = False, progress: bool = True,
               task: Optional[utils_dataset.Task] = None, restart: bool = False,
               force: bool = False) -> dict:
    """Train one network; returns the metrics dict also written to `run_dir/metrics.json`.

    `run_dir` None trains without writing anything. An existing `run_dir` is refused unless
    `resume` (continue from the checkpoint of the last finished epoch) or `restart` (move its
    files aside and train from the start); see run_folder.py. `force`: train even if the
    step's memory estimate exceeds the memory available.
    """
    if resume and run_dir is not None and not Path(run_dir).exists():
        raise run_folder.RunFolderError(f"cannot resume: {run_dir} does not exist")
    return train_seeds(cfg, [cfg.seed], [run_dir], resume, progress, [task], restart=restart, force=force)[0]


# Fields that change a run's initial parameters or data but not its compiled program: runs that
# differ only in these (the seed, and the grid axes of Fig. 2a, 2b, S2a, S2e: the time
# constants, the tanh settings, the noise) can train as one vmapped program.
PROGRAM_FREE = ("seed", "tau_mem", "delta_tau", "hierarchy_tau", "tanh_center", "tanh_coef", "distrib_tau_sd",
                "tau_out", "tau_adapt", "delta_tau_adapt", "noise_rate", "weight_init", "w_scale_n_in",
                "w_scale_n_hid", "w_scale_n_layers")


def program_key(cfg: Config) -> str:
    """What a run's compiled train step depends on: its configuration but PROGRAM_FREE."""
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in PROGRAM_FREE}, sort_keys=True)


def train_seeds(cfg: Config, seeds, run_dirs=None, resume: bool = False, progress=True,
                tasks=None, group_size: Optional[int] = None, restart: bool = False,
                force: bool = False, label_runs: bool = False) -> list:
    """`train_runs` of the runs `cfg.replace(seed=s)` for every seed in `seeds`."""
    return train_runs([cfg.replace(seed=s) for s in seeds], run_dirs, resume, progress, tasks, group_size, restart,
                      force, label_runs)


def train_runs(cfgs: list, run_dirs=None, resume: bool = False, progress=True, tasks=None,
               group_size: Optional[int] = None, restart: bool = False, force: bool = False,
               label_runs: bool = False) -> list:
    """Train the runs `cfgs`, which share one compiled program (`program_key`: they differ
    only in PROGRAM_FREE fields), as vmapped programs of up to `group_size` runs (default:
    `seeds_per_group`); returns their metrics in order, equal (to float tolerance) to
    `train_hsnn` run by run. `resume`: run folders that exist are continued from their
    checkpoints; runs whose checkpoints stand at different epochs are trained in separate
    groups.

    The run folders are created (or locked) before the data is loaded, so that a second run
    on the same folder fails at once; a folder created here is removed again if the data
    cannot be loaded. A run that fails while training leaves error.txt in its folder.
    `progress`: see `progress_mode`; with `label_runs`, each epoch's line starts with the
    names of the run folders it reports (a sweep's run keys, which name the seed)."""
    if len({program_key(c) for c in cfgs}) > 1:
        raise ValueError("train_runs: the runs differ in more than their initial parameters or data")
    cfg, seeds = cfgs[0], [c.seed for c in cfgs]
    progress = progress_mode(progress)
    run_dirs = [Path(d) if d is not None else None for d in (run_dirs or [None] * len(cfgs))]
    for note in dict.fromkeys(n for c in cfgs for n in hierarchy_notes(c)):
        print(note, file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        folders, states = [], []
        for c, d in zip(cfgs, run_dirs):
            folder, state = run_folder.open_run(c, d, resume, restart) if d is not None else (None, None)
            if folder is not None:
                stack.callback(folder.close)
            folders.append(folder)
            states.append(state)
        try:
            tasks = [t if t is not None else utils_dataset.load_task(c)
                     for t, c in zip(tasks or [None] * len(seeds), cfgs)]
        except BaseException:
            _discard(folders)
            raise
        results, failures = {}, {}
        for i, (d, state, task) in enumerate(zip(run_dirs, states, tasks)):
            if d is not None:
                try:  # a checkpoint continues only on the data it trained on
                    run_folder.check_data(d, state, task.fingerprint)
                except run_folder.RunFolderError as err:
                    _record_failure(d, err)
                    failures[i] = err
                    continue
                run_folder.record_provenance(d, task.fingerprint)
        done = [run_folder.epochs_done(st) for st in states]
        size = group_size or runtime.seeds_per_group(cfg)
        for epoch in sorted(set(done)):
            members = [i for i in range(len(seeds)) if done[i] == epoch and i not in failures]
            for group in (members[k:k + size] for k in range(0, len(members), size)):
                pick = lambda items: [items[i] for i in group]  # noqa: E731
                try:
                    results.update(zip(group, _train_group(pick(cfgs), pick(run_dirs), pick(states),
                                                           pick(tasks), progress, force, label_runs)))
                except runtime.OutOfMemory:  # this group trained nothing: its new folders are removed
                    _discard(pick(folders))
                    raise
                except Exception as err:  # not KeyboardInterrupt: an interrupted run is resumable
                    if len(group) == 1:
                        _record_failure(run_dirs[group[0]], err)
                        failures[group[0]] = err
                        continue
                    print(f"a group of {len(group)} runs failed ({type(err).__name__}: {err}); training them "
                          "one at a time from their last checkpoints", file=sys.stderr, flush=True)
                    for i in group:  # each seed alone, from its last checkpoint: only the failing one fails
                        state = run_folder.load_checkpoint(run_dirs[i], cfgs[i]) if run_dirs[i] else None
                        try:
                            results[i] = _train_group([cfgs[i]], [run_dirs[i]], [state], [tasks[i]], progress,
                                                      force, label_runs)[0]
                        except Exception as err_i:
                            _record_failure(run_dirs[i], err_i)
                            failures[i] = err_i
        if failures:  # every other seed has trained; the first failure is the caller's
            raise failures[min(failures)]
        return [results[i] for i in range(len(seeds))]


def _record_failure(run_dir, err: BaseException):
    """error.txt in the run's folder (none without a folder, nor when the disk refuses it or the
    folder is gone)."""
    if run_dir is not None:
        with contextlib.suppress(FileError, OSError):  # the disk refuses it, or the folder was deleted
            run_folder.write_error(run_dir, err)


def _discard(folders):
    """Remove the folders a failed start created and left untrained (run_folder.RunFolder.discard)."""
    for folder in folders:
        if folder is not None:
            folder.discard()


def step_memory(cfg: Config, steps: Steps, optimizer, tasks) -> int:
    """XLA's estimate of the train step's memory [bytes] for the seeds of `tasks`, from the
    shapes of its parameters, optimizer state and first batch (runtime.compiled_memory), for
    the program that training calls: `train_on` when the data are held on the device (less the
    data themselves, which are resident already), else `train`. JAX keeps the program it
    compiles here, so that the first step neither traces nor compiles it again."""
    n = len(tasks)
    per_seed = lambda a: jax.ShapeDtypeStruct((n, *a.shape), a.dtype)  # noqa: E731
    tree = lambda t: jax.tree_util.tree_map(per_seed, t)  # noqa: E731
    params = jax.eval_shape(lambda k: init_params(k, cfg), jax.random.PRNGKey(0))
    params, opt_state = tree(params), tree(jax.eval_shape(optimizer.init, params))
    b = min(cfg.batch_size, len(tasks[0].train))
    keys = per_seed(jax.random.PRNGKey(0))
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    epoch_lr = (scalar(jnp.int32), scalar(jnp.float32))
    if steps.data:
        split = steps.data["train"]
        picks, _ = picks_of([(np.zeros(b, np.int32), None)] * n, 0)  # a first batch's shapes and dtypes
        resident = sum(a.nbytes for a in split)
        return runtime.compiled_memory(steps.train_on, params, opt_state, split, picks, keys, *epoch_lr) - resident
    x_BTI, y = tasks[0].train.X[np.arange(1)], tasks[0].train.Y[:1]
    dtype = runtime.HostBatches().dtype or x_BTI.dtype
    x = jax.ShapeDtypeStruct((n, x_BTI.shape[1], b, x_BTI.shape[2]), dtype)
    y = jax.ShapeDtypeStruct((n, b, *y.shape[1:]), y.dtype)
    return runtime.compiled_memory(steps.train, params, opt_state, Batch(x, y, scalar(jnp.int32)), keys, *epoch_lr)


class RunState(NamedTuple):
    params: list
    opt_state: object
    best_params: list
    metrics: dict
    key_dropout: jax.Array


def _init_run(cfg: Config, optimizer, state, run_dir) -> RunState:
    """Fresh parameters from the seed, or the checkpointed ones."""
    # the published train_hsnn initialises from the second half of PRNGKey(seed)
    key_dropout, key_init = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = init_params(key_init, cfg)
    opt_state = optimizer.init(params)
    if state is not None:
        return RunState(*run_folder.restore_checkpoint(state, params, opt_state, run_dir), key_dropout)
    return RunState(params, opt_state, params, _new_metrics(cfg, params), key_dropout)


class TrainState(NamedTuple):
    """What the seeds of a group carry from epoch to epoch: their parameters and optimizer
    state (stacked: a leading seed axis), and per seed the best parameters so far (host
    copies), the validation accuracy and epoch they come from; the dropout keys; the number of
    epochs finished."""
    params: list
    opt_state: object
    best_params: list
    best_acc: list
    best_epoch: list
    key_dropout: jax.Array
    epoch: int


def start_state(cfgs, optimizer, checkpoints, run_dirs):
    """(TrainState, each seed's metrics record): fresh from the seeds, or from the checkpoints."""
    runs = [_init_run(c, optimizer, st, d) for c, st, d in zip(cfgs, checkpoints, run_dirs)]
    state = TrainState(_stack([r.params for r in runs]), _stack([r.opt_state for r in runs]),
                       [r.best_params for r in runs], [r.metrics["best_valid_acc"] for r in runs],
                       [r.metrics["best_epoch"] for r in runs], jnp.stack([r.key_dropout for r in runs]),
                       len(runs[0].metrics["epochs"]))
    return state, [r.metrics for r in runs]


def is_better(valid_acc: float, best_acc: Optional[float]) -> bool:
    """The best-epoch rule: the first epoch, or a validation accuracy at least as high as the
    best so far (a tie keeps the later epoch, as the published code did: >=)."""
    return best_acc is None or valid_acc >= best_acc


def select_best(state: TrainState, valid_acc, host_params: list) -> TrainState:
    """The state after an epoch whose validation accuracies are `valid_acc` (per seed) and
    whose parameters are `host_params` (per seed, host copies)."""
    best = [(p, float(acc), state.epoch) if is_better(acc, b_acc) else (b_p, b_acc, b_epoch)
            for p, acc, b_p, b_acc, b_epoch in zip(host_params, valid_acc, state.best_params, state.best_acc,
                                                    state.best_epoch)]
    return state._replace(best_params=[b[0] for b in best], best_acc=[b[1] for b in best],
                          best_epoch=[b[2] for b in best])


def epoch_record(cfg: Config, epoch: int, train: Tally, valid: Tally, s: int, seconds: float) -> dict:
    """Seed s's line of metrics.json's `epochs` for one epoch."""
    return dict(epoch=epoch, lr=learning_rate(cfg, epoch), loss=float(train.mean_loss()[s]),
                train_acc=float((train.correct / train.scored)[s]), valid_loss=float(valid.mean_loss()[s]),
                valid_acc=float((valid.batch_acc / valid.batches)[s]), terms=train.mean_terms(s),
                measures=train.final_measures(s), valid_terms=valid.mean_terms(s),
                valid_measures=valid.final_measures(s), seconds=seconds)


def save_epoch(run_dir, cfg: Config, state: TrainState, s: int, host: tuple, metrics: dict, data_md5):
    """Seed s's checkpoint after the epoch that `state` has finished (`host`: every seed's
    parameters and optimizer state as host copies)."""
    if run_dir is not None:
        run_folder.save_checkpoint(run_dir, cfg, host[0][s], host[1][s], state.best_params[s], metrics, data_md5)


class Writer:
    """Checkpoints written by one background thread, in order, while the next epoch trains;
    each file still atomic (a kill leaves the previous checkpoint). A write that failed is
    raised at the next `submit` or at `drain`, which waits for all of them (before the run's
    final files, so that no late checkpoint lands after them)."""

    def __init__(self):
        self.pool, self.pending = cf.ThreadPoolExecutor(1, thread_name_prefix="hsnn-checkpoint"), []

    def submit(self, fn, *args):
        self._raise_failures(done_only=True)
        self.pending.append(self.pool.submit(fn, *args))

    def drain(self):
        self._raise_failures(done_only=False)

    def close(self):
        """Wait for the writes in flight, also when the run stopped: none outlives its group."""
        self.pool.shutdown(wait=True)

    def _raise_failures(self, done_only: bool):
        for future in list(self.pending):
            if done_only and not future.done():
                continue
            self.pending.remove(future)
            future.result()


def _host_seeds(tree, n: int) -> list:
    """Each of the n seeds' slices of a stacked pytree, as host arrays, in one transfer."""
    host = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda leaf: leaf[s], host) for s in range(n)]


def _train_group(cfgs, run_dirs, states, tasks, progress, force, label_runs=False) -> list:
    """Train seeds of one configuration together, all from the same finished epoch: the
    train state goes through the epochs (`_train_epoch`, `evaluate`, `select_best`); each
    seed's record (`epoch_record`) and checkpoint (`save_epoch`) follow every epoch; the best
    parameters are tested at the end."""
    cfg, n = cfgs[0], len(cfgs)
    for run_dir, task in zip(run_dirs, tasks):
        if run_dir is not None and task.extras:
            run_folder.save_task_arrays(run_dir, task.extras)
    optimizer, programs = programs_of(cfg, tasks[0].score_mask)
    steps = programs(device_data(tasks, cfg))
    runtime.check_memory(cfg, lambda: step_memory(cfg, steps, optimizer, tasks), n, force)
    state, records = start_state(cfgs, optimizer, states, run_dirs)
    # the training time of the run in all its parts: a resumed run adds to its checkpoint's
    # (durations from the monotonic clock: a step of the wall clock cannot make them negative)
    t_run, seconds_before = time.monotonic(), [r.get("seconds_total", 0.0) for r in records]
    writer = Writer()
    try:
        while state.epoch < cfg.n_epochs:
            t0 = time.monotonic()
            params, opt_state, train = _train_epoch(steps, state.params, state.opt_state, tasks, cfgs, state.epoch,
                                                    state.key_dropout, progress)
            valid = evaluate(steps, params, [t.valid for t in tasks], cfg, eval_rngs(cfgs, state.epoch, "valid"),
                             "valid")
            host = (_host_seeds(params, n), _host_seeds(opt_state, n))  # params' buffers are donated
            state = select_best(state._replace(params=params, opt_state=opt_state), valid.batch_acc / valid.batches,
                                host[0])
            for s, record in enumerate(records):
                record["epochs"].append(epoch_record(cfg, state.epoch, train, valid, s, time.monotonic() - t0))
                record.update(best_epoch=state.best_epoch[s], best_valid_acc=state.best_acc[s],
                              seconds_total=seconds_before[s] + time.monotonic() - t_run)
                writer.submit(save_epoch, run_dirs[s], cfgs[s], state, s, host, copy.deepcopy(record),
                              tasks[s].fingerprint)
            state = state._replace(epoch=state.epoch + 1)
            if progress:
                names = ", ".join(d.name for d in run_dirs if d is not None) if label_runs else ""
                print_epoch(progress, names, cfg, state.epoch, train, valid, time.monotonic() - t0)
        writer.drain()  # every checkpoint written (or its failure raised) before the final files
    finally:
        writer.close()
    test = evaluate(steps, _stack(state.best_params), [t.test for t in tasks], cfg,
                    eval_rngs(cfgs, cfg.n_epochs, "test"), "test")
    for s, (record, c) in enumerate(zip(records, cfgs)):
        best = state.best_params[s]
        record.update(test_loss=float(test.mean_loss()[s]), test_acc=float((test.batch_acc / test.batches)[s]),
                      test_terms=test.mean_terms(s), test_measures=test.final_measures(s),
                      median_tau_per_layer=median_tau_per_layer(best, c), tau_per_neuron=tau_per_neuron(best, c),
                      w_rec_abs_eigenvalues=recurrent_spectra(best),
                      seconds_total=seconds_before[s] + time.monotonic() - t_run)
        if run_dirs[s] is not None:
            run_folder.finish_run(run_dirs[s], c, best, record)
    return records


def print_epoch(progress: str, names: str, cfg: Config, epoch: int, train: Tally, valid: Tally, seconds: float):
    """The line of a finished epoch (above the progress bar, with bars), naming the runs."""
    line = (f"{f'[{names}] ' if names else ''}epoch {epoch}/{cfg.n_epochs}: loss {_fmt(train.mean_loss(), '.4f')} "
            f"train {_fmt(train.correct / train.scored, '.2%')} valid {_fmt(valid.batch_acc / valid.batches, '.2%')} "
            f"({seconds:.1f} s)")
    if progress == "bars":
        tqdm.write(line)
    else:
        print(line, flush=True)


def _fmt(values, spec):
    """One number, or the range over seeds."""
    return format(values[0], spec) if len(values) == 1 else f"{format(min(values), spec)}..{format(max(values), spec)}"


def _train_epoch(steps, params, opt_state, tasks, cfgs, epoch, key_dropout, progress):
    """One pass over every seed's training set; returns the new state and the epoch's Tally.
    A step's metrics are read only after the next step has been dispatched, so that preparing
    a batch overlaps with computing the last one."""
    cfg = cfgs[0]
    rngs = [np.random.default_rng([c.seed, epoch]) for c in cfgs]
    key_epoch = jax.vmap(jax.random.fold_in, in_axes=(0, None))(key_dropout, epoch)
    lr, epoch_ = jnp.float32(learning_rate(cfg, epoch)), jnp.int32(epoch)
    n = utils_dataset.n_batches(tasks[0].train, cfg.batch_size)
    bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{cfg.n_epochs}", leave=False, disable=progress != "bars")
    tally, pending = Tally(), None

    def record(b, size, m: Metrics):
        loss = np.asarray(m.loss)
        for s in np.flatnonzero(~np.isfinite(loss)):
            seed = f" (seed {cfgs[s].seed})" if len(cfgs) > 1 else ""
            raise TrainingDiverged(f"the loss became {loss[s]} at epoch {epoch + 1}, batch {b + 1}{seed} "
                                   "(try a smaller --lr or a different --seed)")
        tally.add(m, size)
        bar.update()
        bar.set_postfix(loss=_fmt(tally.mean_loss(), ".4f"), acc=_fmt(tally.correct / tally.scored, ".2%"))

    for b, (size, step) in enumerate(batch_calls(steps, tasks, rngs, cfg.batch_size)):
        params, opt_state, step_metrics = step(params, opt_state, key_epoch, epoch_, lr)
        if pending is not None:
            record(*pending)
        pending = (b, size, step_metrics)
    record(*pending)
    bar.close()
    return params, opt_state, tally


def batch_calls(steps: Steps, tasks, rngs, batch_size: int):
    """Yield (batch size, step) for each training batch of the epoch: `step(params, opt_state,
    key_epoch, epoch, lr)` trains on it. With the data on the device, only each batch's
    positions and augmentation draws are sent; else the batch is built on the host
    (runtime.HostBatches) and put beside the step's outputs (its buffer is reused after them)."""
    if steps.data:
        plans = [utils_dataset.batch_plan(t.train, batch_size, rng) for t, rng in zip(tasks, rngs)]
        for b, batch in enumerate(zip(*plans)):
            picks, size = picks_of(batch, b)

            def on_device(params, opt_state, key_epoch, epoch, lr, picks=picks):
                return steps.train_on(params, opt_state, steps.data["train"], picks, key_epoch, epoch, lr)
            yield size, on_device
        return
    host = runtime.HostBatches()
    iterators = [utils_dataset.iterate_batches(t.train, batch_size, rng, time_major=False)
                 for t, rng in zip(tasks, rngs)]
    for b, batches in enumerate(zip(*iterators)):
        x, y = host.put([bt[0] for bt in batches]), _stack([bt[1] for bt in batches])

        def step(params, opt_state, key_epoch, epoch, lr, batch=Batch(x, y, jnp.int32(b))):
            out = steps.train(params, opt_state, batch, key_epoch, epoch, lr)
            host.fence(out[2])
            return out
        yield y.shape[1], step


def _new_metrics(cfg, params):
    return dict(epochs=[], best_epoch=None, best_valid_acc=None,
                median_tau_init=median_tau_per_layer(params, cfg))


