"""Training: loss, the published optimizer, one jitted train step, evaluation, and the run
folder with its per-epoch checkpoint.

`train_hsnn(cfg)` is the single entry point of main.py and sweep.py. Randomness is a pure
function of (seed, epoch): the data order of epoch e comes from numpy's
`default_rng([seed, e])` and the dropout keys from `fold_in(key_dropout, e)`, so a run
resumed from the checkpoint of epoch e continues exactly as an uninterrupted run.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import utils_dataset
from models import decode, forward
from utils_initialization import Config, init_params, tau_from_alpha

LOG_EPS = 1e-12          # inside log(yhat) of the cross-entropy
ALPHA_HIGH = 0.95        # decays above this are penalised ...
ALPHA_HIGH_WEIGHT = 0.1  # ... with this weight
ALPHA_GRAD_SCALE = 0.1   # train_alpha: hidden-layer decay gradients are scaled by this
CHECKPOINT = "checkpoint.npz"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunFolderError(RuntimeError):
    """The run folder exists (and --resume was not given) or cannot be resumed."""


# --- loss (DESIGN.md Sec. 2) ---------------------------------------------------------------
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


def regularizers(params, hidden_TBH, cfg: Config) -> dict:
    """Every non-CE term, reported separately."""
    alphas = [layer["alpha"] for layer in params]
    terms = {
        "alpha_high": ALPHA_HIGH_WEIGHT * safe_norm([jax.nn.relu(a - ALPHA_HIGH) for a in alphas]),
        "alpha_sd": cfg.l2_alpha_sd * safe_norm([a - jnp.mean(a) for a in alphas]),
    }
    if cfg.l2_lambda:
        weights = [v for layer in params for k, v in layer.items() if k != "alpha"]
        terms["l2"] = cfg.l2_lambda * safe_norm(weights)
    if cfg.freq_lambda:
        rate = jnp.mean(jnp.stack([S.sum(0).mean() for S in hidden_TBH]))
        terms["firing_rate"] = cfg.freq_lambda * (cfg.target_fr - rate) ** 2
    return terms


def loss_fn(params, x_TBI, y, cfg: Config, key=None, train=False):
    """Total loss and (terms, class probabilities) of a time-major batch."""
    hidden, out_TBO = forward(params, x_TBI.astype(jnp.float32), cfg, key, train)
    yhat = decode(out_TBO, cfg.decoder)
    terms = {"ce": cross_entropy(yhat, y, cfg.n_out), **regularizers(params, hidden, cfg)}
    return sum(terms.values()), (terms, yhat)


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
    n_decays = -(-(epoch - cfg.lr_start_decay) // cfg.lr_decay_every)
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


def alpha_grad_rule(grads, train_alpha: bool):
    """Decays are fixed unless train_alpha; then hidden-layer decay gradients x 0.1 and the
    output layer's decay stays fixed."""
    scales = [ALPHA_GRAD_SCALE if train_alpha else 0.0] * (len(grads) - 1) + [0.0]
    return [dict(layer, alpha=layer["alpha"] * s) for layer, s in zip(grads, scales)]


# --- compiled steps ------------------------------------------------------------------------
class Steps(NamedTuple):
    train: callable
    evaluate: callable


def make_steps(cfg: Config, optimizer) -> Steps:
    def train_step(params, opt_state, x, y, score_mask, key, epoch, lr):
        (loss, (terms, yhat)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, x, y, cfg, key, True)
        grads = alpha_grad_rule(grads, cfg.train_alpha)
        updates, opt_state = optimizer.update(grads, opt_state, params, epoch=epoch, lr=lr)
        params = optax.apply_updates(params, updates)
        return params, opt_state, (loss, terms, *correct_counts(yhat, y, score_mask))

    def eval_step(params, x, y, score_mask):
        loss, (terms, yhat) = loss_fn(params, x, y, cfg)
        return (loss, terms, *correct_counts(yhat, y, score_mask))

    return Steps(jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))


def evaluate(steps: Steps, params, split, cfg: Config, score_mask):
    """Mean loss (per batch, weighted by batch size) and accuracy over a whole split."""
    loss_sum, correct, total = 0.0, 0.0, 0.0
    for x, y in utils_dataset.iterate_batches(split, cfg.batch_size):
        loss, _, c, t = steps.evaluate(params, x, y, score_mask)
        loss_sum += float(loss) * len(y)
        correct, total = correct + float(c), total + float(t)
    return loss_sum / len(split), correct / total


# --- the run -------------------------------------------------------------------------------
def median_tau_per_layer(params, cfg: Config) -> list:
    """Median time constant [s] of each hidden layer (clipped decays, as the model uses)."""
    from models import ALPHA_MAX, ALPHA_MIN
    return [float(np.median(tau_from_alpha(np.clip(np.asarray(l["alpha"]), ALPHA_MIN, ALPHA_MAX), cfg.dt)))
            for l in params[:-1]]


def configure_cpu_runtime():
    """XLA flags that speed up this model on CPU; call before JAX's first computation.
    XLA's XNNPACK ("ynn") fusions make the narrow matmuls of small SNN layers about 1.5x
    slower per train step on the 2-core machine we benchmark on. Flags already in
    XLA_FLAGS are kept; HSNN_XLA_DEFAULTS=1 leaves XLA's defaults alone."""
    import jaxlib
    if tuple(int(v) for v in jaxlib.__version__.split(".")[:2]) < (0, 10):
        return  # older XLA builds abort on flags they do not know
    flag = "--xla_cpu_experimental_ynn_fusion_type="
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("HSNN_XLA_DEFAULTS") != "1" and "ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def train_hsnn(cfg: Config, run_dir=None, resume: bool = False, progress: bool = True,
               task: Optional[utils_dataset.Task] = None) -> dict:
    """Train one network; returns the metrics dict also written to `run_dir/metrics.json`.

    `run_dir` None trains without writing anything. An existing `run_dir` is refused unless
    `resume`, which continues from its checkpoint of the last finished epoch.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    state = _open_run(cfg, run_dir, resume)
    task = task if task is not None else utils_dataset.load_task(cfg)
    if run_dir is not None and task.extras and not (run_dir / "task.npz").exists():
        _atomic_write(run_dir / "task.npz", lambda f: np.savez(f, **task.extras))
    mask = None if task.score_mask is None else jnp.asarray(task.score_mask)
    optimizer = make_optimizer(cfg)
    steps = make_steps(cfg, optimizer)
    key_init, key_dropout = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = init_params(key_init, cfg)
    opt_state = optimizer.init(params)
    best_params, metrics = params, _new_metrics(cfg, params)
    if state is not None:
        params, opt_state, best_params, metrics = _restore(state, params, opt_state)
    t_run = time.time()
    for epoch in range(len(metrics["epochs"]), cfg.n_epochs):
        t0 = time.time()
        params, opt_state, train_loss, train_acc = _train_epoch(
            steps, params, opt_state, task, mask, cfg, epoch, key_dropout, progress)
        valid_loss, valid_acc = evaluate(steps, params, task.valid, cfg, mask)
        metrics["epochs"].append(dict(
            epoch=epoch, lr=learning_rate(cfg, epoch), loss=train_loss, train_acc=train_acc,
            valid_loss=valid_loss, valid_acc=valid_acc, seconds=time.time() - t0))
        if metrics["best_epoch"] is None or valid_acc > metrics["best_valid_acc"]:
            best_params = jax.device_get(params)  # a host copy: params' buffers are donated
            metrics.update(best_epoch=epoch, best_valid_acc=valid_acc)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.n_epochs}: loss {train_loss:.4f} train {train_acc:.2%}"
                       f" valid {valid_acc:.2%} ({metrics['epochs'][-1]['seconds']:.1f} s)")
        if run_dir is not None:
            _save_checkpoint(run_dir, params, opt_state, best_params, metrics)
    test_loss, test_acc = evaluate(steps, best_params, task.test, cfg, mask)
    metrics.update(test_loss=test_loss, test_acc=test_acc,
                   median_tau_per_layer=median_tau_per_layer(best_params, cfg),
                   seconds_total=metrics.get("seconds_total", 0.0) + time.time() - t_run)
    if run_dir is not None:
        _finish_run(run_dir, best_params, metrics)
    return metrics


def train_seeds(cfg: Config, seeds, run_dirs=None, resume: bool = False,
                progress: bool = True) -> list:
    """Train the runs `cfg.replace(seed=s)` for every seed in `seeds`; returns their metrics
    in order, each as `train_hsnn` returns it (and writes it to `run_dirs[i]`, if given).
    The entry point for sweeps: runs that differ only in their seed go through here.
    `resume`: run folders that exist are continued from their checkpoint."""
    run_dirs = list(run_dirs) if run_dirs is not None else [None] * len(seeds)
    return [train_hsnn(cfg.replace(seed=s), d, resume=resume and d is not None and Path(d).exists(),
                       progress=progress) for s, d in zip(seeds, run_dirs)]


def _train_epoch(steps, params, opt_state, task, mask, cfg, epoch, key_dropout, progress):
    """One pass over the training set. A step's metrics are read only after the next step
    has been dispatched, so that preparing a batch overlaps with computing the previous one."""
    rng = np.random.default_rng([cfg.seed, epoch])
    key = jax.random.fold_in(key_dropout, epoch)
    lr = jnp.float32(learning_rate(cfg, epoch))
    n = utils_dataset.n_batches(task.train, cfg.batch_size)
    bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{cfg.n_epochs}", leave=False, disable=not progress)
    sums = np.zeros(3)  # loss x samples, correct, scored
    pending = None

    def record(b, batch_size, step_metrics):
        loss, _, correct, scored = step_metrics
        loss = float(loss)
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at epoch {epoch + 1}, batch {b + 1} "
                                   "(try a smaller --lr or a different --seed)")
        sums[:] += (loss * batch_size, float(correct), float(scored))
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{sums[1] / sums[2]:.2%}")

    for b, (x, y) in enumerate(utils_dataset.iterate_batches(task.train, cfg.batch_size, rng)):
        params, opt_state, step_metrics = steps.train(
            params, opt_state, x, y, mask, jax.random.fold_in(key, b), jnp.int32(epoch), lr)
        if pending is not None:
            record(*pending)
        pending = (b, len(y), step_metrics)
    record(*pending)
    bar.close()
    return params, opt_state, float(sums[0] / len(task.train)), float(sums[1] / sums[2])


def _new_metrics(cfg, params):
    return dict(epochs=[], best_epoch=None, best_valid_acc=None,
                median_tau_init=median_tau_per_layer(params, cfg))


# --- run folder: atomic writes, never overwritten --------------------------------------------
def _atomic_write(path: Path, write):
    """Write through a temporary file in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj):
    _atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=1).encode()))


def named_arrays(params, prefix=""):
    """{'L0_W': ..., 'L0_alpha': ...}: the golden files' naming."""
    return {f"{prefix}L{l}_{k}": np.asarray(v) for l, layer in enumerate(params) for k, v in layer.items()}


def params_from_arrays(arrays, prefix="") -> list:
    """Inverse of `named_arrays`."""
    layers = {}
    for name, value in arrays.items():
        if name.startswith(prefix + "L"):
            l, key = name[len(prefix) + 1:].split("_", 1)
            layers.setdefault(int(l), {})[key] = jnp.asarray(value)
    return [layers[l] for l in sorted(layers)]


def _open_run(cfg: Config, run_dir: Optional[Path], resume: bool):
    """Create the run folder, or load its checkpoint when resuming."""
    if run_dir is None:
        return None
    if run_dir.exists() and not resume:
        raise RunFolderError(f"run folder {run_dir} already exists; choose another "
                             "--save_dir_name, or add --resume to continue it")
    if resume:
        if not (run_dir / "config.json").exists():
            raise RunFolderError(f"cannot resume: {run_dir} holds no config.json")
        stored = json.loads((run_dir / "config.json").read_text())
        if stored != cfg.to_dict():
            diff = sorted(k for k in stored if stored[k] != cfg.to_dict().get(k))
            raise RunFolderError(f"cannot resume {run_dir}: its configuration differs in {diff}")
        if (run_dir / "metrics.json").exists() and "test_acc" in json.loads((run_dir / "metrics.json").read_text()):
            raise RunFolderError(f"{run_dir} is a finished run; nothing to resume")
        path = run_dir / CHECKPOINT
        return dict(np.load(path)) if path.exists() else None
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}."))
    write_json(tmp / "config.json", cfg.to_dict())
    try:
        os.rename(tmp, run_dir)  # atomic; fails if another process created it meanwhile
    except OSError:
        shutil.rmtree(tmp)
        raise RunFolderError(f"run folder {run_dir} already exists; choose another --save_dir_name")
    return None


def _save_checkpoint(run_dir, params, opt_state, best_params, metrics):
    """Everything needed to continue after the last finished epoch, in one atomic file."""
    arrays = {f"opt_{i}": np.asarray(v) for i, v in enumerate(jax.tree_util.tree_leaves(opt_state))}
    arrays.update(named_arrays(params, "params/"), **named_arrays(best_params, "best/"))
    arrays["metrics_json"] = np.array(json.dumps(metrics))
    _atomic_write(run_dir / CHECKPOINT, lambda f: np.savez(f, **arrays))
    write_json(run_dir / "metrics.json", metrics)


def _restore(state, params, opt_state):
    treedef = jax.tree_util.tree_structure(opt_state)
    n = treedef.num_leaves
    opt_state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(state[f"opt_{i}"]) for i in range(n)])
    return (params_from_arrays(state, "params/"), opt_state, params_from_arrays(state, "best/"),
            json.loads(str(state["metrics_json"])))


def _finish_run(run_dir, best_params, metrics):
    """The best parameters and the final metrics; the checkpoint has served its purpose."""
    _atomic_write(run_dir / "params.npz", lambda f: np.savez(f, **named_arrays(best_params)))
    write_json(run_dir / "metrics.json", metrics)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
