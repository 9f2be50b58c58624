"""Where a sweep's seed groups train, besides the driver itself: worker processes on this
machine (`--jobs`), a Ray cluster (`--ray`); and Weights & Biases logging (`--wandb`).

Every backend runs `sweep_task.train_task` on a task and hands each outcome, results or the
exception, to the driver's `record.result`, one task at a time.
"""

import concurrent.futures as cf
import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import threading

from sweep_definitions import ROOT, SweepError
from sweep_task import train_task


class WorkerDied(RuntimeError):
    """The process training a task ended without an answer (killed, out of memory)."""


# Of each GPU's memory, the share JAX may use in all (CUDA and the driver keep the rest); the
# workers that share a GPU split it.
GPU_SHARE = 0.9


def worker_env(lane: int, jobs: int, gpus: list) -> dict:
    """The environment of the worker process of lane `lane` (of `jobs`), set before JAX starts
    in it. On GPUs (`gpus`: the ids of CUDA_VISIBLE_DEVICES the driver sees), each worker may
    grow to its share of a GPU's memory and no more (XLA_PYTHON_CLIENT_MEM_FRACTION, with
    preallocation off, so that it holds what it uses), the lanes spread over the GPUs, and
    with several GPUs each worker sees only its own (CUDA_VISIBLE_DEVICES). On the CPU:
    nothing (the runs share the host's memory, which the memory guard reads)."""
    if not gpus:
        return {}
    sharing = -(-jobs // len(gpus))  # lanes per GPU
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{GPU_SHARE / sharing:.3f}"}
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[lane % len(gpus)])
    return env


def ray_env(gpus_per_run: float) -> dict:
    """A Ray task's environment: with `--gpus_per_run` f, JAX may use f of its GPU's share
    (Ray itself sets CUDA_VISIBLE_DEVICES), preallocation off."""
    if not gpus_per_run:
        return {}
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{GPU_SHARE * min(gpus_per_run, 1.0):.3f}"}


def run_in_processes(tasks: list, jobs: int, record, gpus: list = ()):
    """`jobs` lanes, each a worker process of its own that trains one task after another;
    the driver writes every line. A worker that dies (the out-of-memory killer, say) takes
    only its own task with it: the task is tried once more in a fresh worker, and if that
    dies too, its runs are recorded as failed and the lane goes on with a fresh worker. Each
    lane's workers get `worker_env` (their share of a GPU)."""
    queue, lock, pools = list(tasks), threading.Lock(), []

    def new_pool(lane_index):
        pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                      initargs=(os.getpid(), worker_env(lane_index, jobs, list(gpus))))
        pools.append(pool)
        return pool

    def lane(lane_index):
        pool = new_pool(lane_index)
        while True:
            with lock:
                if not queue:
                    break
                group, task = queue.pop(0)
            for attempt in (1, 2):
                try:
                    outcome = pool.submit(train_task, task).result()
                except cf.process.BrokenProcessPool:
                    pool.shutdown(wait=False)
                    pool = new_pool(lane_index)
                    outcome = WorkerDied(f"the worker process training it died ({'again, ' if attempt == 2 else ''}"
                                         "killed or out of memory)")
                    continue
                except Exception as err:  # the task's own exception
                    outcome = err
                break
            with lock:
                record.result(group, outcome)
        pool.shutdown(wait=True)

    lanes = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(min(jobs, len(tasks)))]
    try:
        for t in lanes:
            t.start()
        for t in lanes:
            while t.is_alive():
                t.join(0.5)  # wakes up for Ctrl-C
    finally:
        if any(t.is_alive() for t in lanes):  # interrupted: the workers go with the driver
            with lock:
                queue.clear()
            for pool in pools:
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)


def _start_worker(driver: int, env: dict):
    """A worker's first act: die with the driver (`_die_with_parent`), then take its
    environment (`worker_env`) before JAX starts."""
    _die_with_parent(driver)
    os.environ.update(env)


def _die_with_parent(driver: int):
    """Workers end when the driver dies (even by SIGKILL), so that a re-run never meets
    an orphan still training the same run (Linux; elsewhere the run locks serialise). A
    worker starts by importing the driver's modules (JAX among them: seconds) before this
    runs; if the driver died meanwhile, the death signal would never come, so the worker
    checks that its parent is still the driver and otherwise ends at once."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != driver:
        os._exit(1)


def run_on_ray(tasks: list, args, record):
    """Each seed group as one Ray task with `--cpus_per_run` CPUs and `--gpus_per_run`
    GPUs. The project's code travels as the job's working_dir; the run folders come back
    as bytes and the driver writes them, so workers share no folder with it."""
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray: pip install -r requirements/requirements_cluster.txt")
    env_vars = ray_env(args.gpus_per_run)
    ray.init(address=args.ray, log_to_driver=False, runtime_env=dict(
        working_dir=str(ROOT), env_vars=env_vars,
        excludes=[".git", ".venv/", "results/", "datasets/", "tests/data/", "*.pyc"]))
    remote = ray.remote(train_task).options(
        num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, max_retries=2)
    refs = {remote.remote(task): group for group, task in tasks}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            group = refs.pop(ready[0])
            try:
                record.result(group, ray.get(ready[0]))
            except Exception as err:  # the task's exception, re-raised by ray.get
                record.result(group, err)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.shutdown()


def log_to_wandb(sweep, run, project: str):
    """One W&B run per finished run, as the published code logged: the configuration, every
    epoch's metrics, the final test accuracy. WANDB_MODE=offline works without network."""
    import wandb
    folder = sweep.folder / "runs" / run.key
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    wb = wandb.init(project=project, group=sweep.folder.name, name=run.key, config=config,
                    dir=str(sweep.folder), reinit="finish_previous")
    for epoch in metrics["epochs"]:
        wb.log({k: v for k, v in epoch.items() if k != "epoch"}, step=epoch["epoch"])
    wb.summary.update({k: metrics[k] for k in ("test_acc", "test_loss", "best_valid_acc", "best_epoch")})
    wb.summary["median_tau_per_layer"] = metrics["median_tau_per_layer"]
    wb.finish()
