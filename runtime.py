"""The machine a run trains on: JAX's runtime settings, the memory a train step needs against
the memory free, how many seeds share one compiled program, and the host buffers through
which batches reach it."""

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from utils_initialization import Config


def configure_jax(compilation_cache: bool = True, cache_dir=None, cfgs=()):
    """Runtime settings for the entry points (main.py, sweep.py, benchmarks); call before
    JAX's first computation. XLA reads its flags when its backend starts: called later, when
    XLA_FLAGS lacks a flag it would set, it raises a RuntimeError (a sweep that trained with
    other flags than main.py would round differently).

    - XLA's XNNPACK ("ynn") fusions slow down the narrow matmuls of small SNN layers on x86
      CPUs (docs/performance.md): they are switched off unless XLA_FLAGS already mentions them
      or HSNN_XLA_DEFAULTS=1.
    - JAX's persistent compilation cache (in `cache_dir`, else $HSNN_CACHE_DIR, default
      ~/.cache/hsnn/jax) lets a second run of the same configuration skip compilation.
      Cached programs are the programs XLA would compile again: results do not change.
    - glibc's allocator keeps XLA's temporaries instead of mapping and unmapping them at
      every step (`keep_heap`; off with HSNN_MALLOC_DEFAULTS=1), when the train step of one
      of the configurations `cfgs` that this process will train is large (`large_step`).
    """
    flags = our_xla_flags()
    if flags and _backend_started():  # XLA reads its flags once: these would silently not apply
        raise RuntimeError("configure_jax: JAX's backend has already started without "
                           f"{' '.join(flags)}; call configure_jax before any JAX computation "
                           "(check_backend included)")
    add_our_xla_flags()
    if any(large_step(c) for c in cfgs):
        keep_heap()
    if compilation_cache:
        use_compilation_cache(cache_dir or os.environ.get("HSNN_CACHE_DIR",
                                                          os.path.join(Path.home(), ".cache", "hsnn", "jax")))


def our_xla_flags() -> list:
    """The XLA flags configure_jax adds to XLA_FLAGS (none that it already mentions)."""
    import jaxlib
    flags = os.environ.get("XLA_FLAGS", "")
    new_enough = tuple(int(v) for v in jaxlib.__version__.split(".")[:2]) >= (0, 10)
    if new_enough and os.environ.get("HSNN_XLA_DEFAULTS") != "1" and "ynn_fusion_type" not in flags:
        return ["--xla_cpu_experimental_ynn_fusion_type="]
    return []


def add_our_xla_flags():
    """Add our_xla_flags() to the environment's XLA_FLAGS (read when JAX's backend starts)."""
    flags = our_xla_flags()
    if flags:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def on_accelerator() -> bool:
    """Whether JAX computes on an accelerator (GPU, TPU, Metal) rather than the CPU."""
    return jax.default_backend() != "cpu"


def _backend_started() -> bool:
    """Whether JAX's backend has started (XLA_FLAGS are read then, once)."""
    from jax._src import xla_bridge
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


# glibc maps every block above this size (the largest its adaptive mmap threshold becomes)
MMAP_THRESHOLD_MAX = 32 * 2 ** 20


def step_bytes(cfg: Config) -> int:
    """A stand-in for the size of a train step's temporaries [bytes]: one batch of inputs and
    hidden activations in float32, 4 x nb_steps x batch_size x (n_in + every hidden neuron).
    It separates what XLA reports (memory_analysis, 2 cores, jax 0.10): MTS-XOR 3 hidden
    layers of 10: 14 MiB here, 26 MiB XLA; SHD 3 x 32: 78 and 36 MiB; SHD 3 x 128: 106 and
    127 MiB."""
    return 4 * cfg.nb_steps * cfg.batch_size * (cfg.n_in + cfg.n_hid * cfg.n_hidden_layers)


def large_step(cfg: Config) -> bool:
    """Whether keep_heap pays for `cfg`: its step's temporaries (`step_bytes`) lie above glibc's
    mmap threshold, so that without it every step maps and faults them in afresh (SHD, SSC,
    MNIST's latency code). Below it (MTS-XOR, sequential MNIST) the one-arena setting costs
    instead: an MTS-XOR step 5-30 % more CPU time (docs/performance.md)."""
    return step_bytes(cfg) > MMAP_THRESHOLD_MAX


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_heap() -> bool:
    """glibc's allocator set to keep what it allocates: no mmap for large blocks (M_MMAP_MAX
    0), no return of the heap's top to the system (M_TRIM_THRESHOLD at its maximum), one
    arena for all threads (M_ARENA_MAX 1, so that one heap holds the large temporaries of
    every XLA thread). Without it, every SHD train step maps its 36-127 MiB of temporaries
    afresh (glibc maps blocks above 32 MiB), faults them in 4 KiB at a time and unmaps them
    again: 17 of 83 ms of CPU per step of 3 hidden layers of 32 (docs/performance.md). The
    price: the process keeps its peak memory until it ends. Results are bitwise the same (only
    where memory lies changes). Returns whether the settings were applied: glibc only (Linux),
    and not with HSNN_MALLOC_DEFAULTS=1."""
    if os.environ.get("HSNN_MALLOC_DEFAULTS") == "1" or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_ARENA_MAX, 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


class BackendError(RuntimeError):
    """JAX cannot start the backend that the environment asks for (JAX_PLATFORMS, XLA_FLAGS)."""


OUR_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type",)  # what configure_jax itself sets


def check_backend():
    """Start JAX's backend now, before anything is written, so that an environment it cannot
    run in is one BackendError line and leaves no run folder behind: a platform that is not
    installed or misspelt (JAX_PLATFORMS), or flags that XLA does not know (XLA_FLAGS; XLA
    aborts the process on those, so they are tried in a child process first)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if any(not f.startswith(OUR_XLA_FLAGS) for f in flags.split()):
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                               timeout=300)
        said = [line for line in probe.stderr.splitlines() if "XLA_FLAGS" in line]
        if probe.returncode != 0 and said:
            reason = said[-1].split("] ", 1)[-1].strip()
            raise BackendError(f"XLA refuses the XLA_FLAGS of the environment ({reason}); correct or unset XLA_FLAGS")
    try:
        jax.devices()
    except Exception as err:  # JAX raises RuntimeError, or a bare AssertionError for a missing plugin
        asked = os.environ.get("JAX_PLATFORMS") or "the default"
        detail = " ".join(str(err).split()) or type(err).__name__
        raise BackendError(f"JAX cannot start the platform JAX_PLATFORMS asks for ({asked}: {detail}); unset "
                           "JAX_PLATFORMS or set it to one that is installed (cpu; cuda needs "
                           "requirements/requirements_gpu.txt)") from None


def use_compilation_cache(cache_dir):
    """JAX's persistent compilation cache in `cache_dir`, for every program, however short
    its compilation: a run's eager start (parameter initialisation, about 60 small programs of
    some 20 ms each) is then read back too, about 1 s of every start on a 2-core CPU.

    JAX writes an entry in place, so a process that starts beside another (a sweep's workers,
    the tests) may read an entry still being written; JAX then compiles the program itself and
    warns. That warning is silenced: the outcome is only the compilation the cache would have
    saved. (A size limit would make JAX lock the folder instead, but then every write reads
    the access time of every entry: the test suite took 1.4 min longer.)"""
    warnings.filterwarnings("ignore", message="Error reading persistent compilation cache entry")
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def gpu_ids() -> list:
    """The ids (as CUDA_VISIBLE_DEVICES names them) of the GPUs JAX sees; [] without GPUs."""
    if jax.default_backend() != "gpu":
        return []
    count = len(jax.devices())
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[:count] if len(visible) >= count else [str(i) for i in range(count)]


# Of the accelerator's free memory, the share the runs of one vmapped program may fill (the
# data sets and XLA's own buffers need the rest).
GROUP_MEMORY_SHARE = 0.5


def seeds_per_group(cfg: Config, per_run_bytes: Optional[int] = None) -> int:
    """How many runs of `cfg`'s program one vmapped program trains by default: on the CPU one,
    because there the vmapped program is slower than the runs one after another
    (docs/performance.md; measured with benchmarks/benchmark.py --seeds 10
    --compare_sequential); on an accelerator as many as GROUP_MEMORY_SHARE of its free memory
    holds, at `per_run_bytes` each (default: a rough estimate of one run's batch and
    activations)."""
    if not on_accelerator():
        return 1
    if per_run_bytes is None:
        per_run_bytes = 4 * cfg.nb_steps * cfg.batch_size * (cfg.n_in + 6 * cfg.n_hid * cfg.n_hidden_layers)
    free = available_memory() or 2 ** 31
    return max(1, int(GROUP_MEMORY_SHARE * free) // per_run_bytes)


# Of the free memory (the accelerator's; on the CPU the host's), the share a group's data sets
# may take when they are held on the device (`--data_placement auto`).
DATA_SHARE = 0.3


def data_fits(nbytes: int) -> bool:
    """Whether data sets of `nbytes` may be held on the device (DATA_SHARE of its free memory)."""
    free = available_memory()
    return free is not None and nbytes <= DATA_SHARE * free


class OutOfMemory(RuntimeError):
    """The train step would need more memory than the machine has available."""


def available_memory() -> Optional[int]:
    """Bytes still free for training: the accelerator's free memory, on the CPU the host's
    available memory (Linux MemAvailable, else the free physical pages); None if unknown."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0) if "bytes_limit" in stats else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def compiled_memory(jitted, *abstract_args) -> int:
    """XLA's estimate of the memory [bytes] of `jitted` on arguments of these shapes
    (jax.ShapeDtypeStruct): arguments, outputs not aliased to them, and temporaries. Compiled
    from shapes alone, nothing allocated; JAX keeps the compiled program for the first call of
    `jitted` on arguments of these shapes, which neither traces nor compiles it again."""
    m = jitted.lower(*abstract_args).compile().memory_analysis()
    if m is None:
        return 0
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


# the flags that set the size of the train step, named when it does not fit
SIZE_FLAGS = ("n_hid", "n_layers", "batch_size", "nb_steps", "n_in")


def check_memory(cfg: Config, need_bytes, n_seeds: int, force: bool = False):
    """Stop before training when the step's estimate (`need_bytes()`, asked only when the
    available memory is known) exceeds the memory available; `force` tries anyway."""
    available = available_memory()
    if force or available is None:
        return
    need = need_bytes()
    if need > available:
        flags = " ".join(f"--{f} {getattr(cfg, f)}" for f in SIZE_FLAGS)
        seeds = f" x {n_seeds} seeds" if n_seeds > 1 else ""
        raise OutOfMemory(f"the train step needs about {need / 2**30:.1f} GiB (XLA's estimate for {flags}"
                          f"{seeds}), more than the {available / 2**30:.1f} GiB available; make those "
                          "flags smaller, or add --force to try anyway")


class HostBatches:
    """Host buffers for the input batches, made time-major (and on the CPU converted to
    float32) in one copy. On the CPU, JAX reads a 64-byte aligned numpy array in place
    instead of copying it, and numpy's conversion is faster than XLA's own uint8-to-float32
    conversion there (docs/performance.md). An accelerator gets the stored dtype (uint8 spike counts: a
    quarter of the bytes to transfer) and converts on the device. A buffer is reused every
    `slots` batches, so each batch is put with the outputs of the step that reads it
    (`fence`); the buffer is overwritten only after that step finished.

    `dtype`: of the buffers; None keeps the batches' own; default float32 on the CPU, else None."""

    def __init__(self, slots: int = 2, dtype="auto"):
        self.slots, self.count = slots, 0
        self.buffers, self.fences = {}, [None] * slots
        self.dtype = (np.float32 if jax.default_backend() == "cpu" else None) if dtype == "auto" else dtype

    def put(self, xs_BTI) -> np.ndarray:
        """[S, T, B, I] of the seeds' batch-major arrays `xs_BTI`."""
        k = self.count % self.slots
        if self.fences[k] is not None:
            jax.block_until_ready(self.fences[k])
            self.fences[k] = None
        b, t, i = xs_BTI[0].shape
        shape, dtype = (len(xs_BTI), t, b, i), np.dtype(self.dtype or xs_BTI[0].dtype)
        if (k, shape, dtype) not in self.buffers:
            self.buffers[k, shape, dtype] = _aligned_empty(shape, dtype)
        out = self.buffers[k, shape, dtype]
        for s, x_BTI in enumerate(xs_BTI):
            np.copyto(out[s], x_BTI.transpose(1, 0, 2))
        self.count += 1
        return out

    def fence(self, outputs):
        """The outputs of the step that reads the last batch put."""
        self.fences[(self.count - 1) % self.slots] = outputs


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)
