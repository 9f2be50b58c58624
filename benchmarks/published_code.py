"""This code's speed against the authors' published code, run on the same machine in the same
minutes, offline:

    git clone https://github.com/EIS-Hub/hSNN /path/to/hSNN          # the published code
    pip install -r requirements/requirements_published_code.txt scipy scikit-learn six wandb
    python3 benchmarks/published_code.py --published /path/to/hSNN [--rounds 2] [--out FILE]

Three measurements, each taken from both codes in turn, `--rounds` times:

- MTS-XOR, 3 hidden layers (`--n_layers 4 --hierarchy_tau tanh --delta_tau 0.4 --tau_mem 0.3`,
  dropout 0.1, batch 512): seconds per training epoch in the steady state. The published
  main.py prints each epoch's training time ("t: ... sec"); ours is `benchmark.py`'s.
- SHD, 3 hidden layers of 32 (`--n_layers 4 --n_hid 32`): seconds per training epoch in the
  steady state, the published code's from its 4-epoch run below, ours from `benchmark.py`.
- SHD, 3 hidden layers of 32 (`--n_layers 4 --n_hid 32`), 4 epochs: the whole process, from
  start to exit (data loading, compilation, training, evaluation), both main.py on the same
  synthetic SHD files of the real sizes (`tools/make_synthetic_audiospikes.py`). Ours runs as a
  user's would, with its binned-data cache and JAX's compilation cache (both on by default):
  cold in the first round (binning and compiling), warm in the later ones. The published
  code has neither and bins and compiles at every run.

The published code wants the network for SHD's checksums: its `urllib.request.urlopen` of
zenkelab.org is answered from the synthetic files' md5sums.txt (a `sitecustomize.py` in a
temporary folder; the published files are not changed). Prints a table and writes JSON.
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MTS_XOR = ["--dataset_name", "mts_xor", "--n_layers", "4", "--hierarchy_tau", "tanh", "--delta_tau", "0.4",
           "--tau_mem", "0.3"]
SHD = ["--dataset_name", "shd", "--n_layers", "4", "--n_hid", "32", "--n_epochs", "4"]
OFFLINE = '''
import io, urllib.request
from pathlib import Path
_urlopen = urllib.request.urlopen


def urlopen(url, *args, **kwargs):
    """zenkelab.org's md5sums.txt from the synthetic files; nothing else is fetched."""
    if str(url).startswith("https://zenkelab.org/datasets/md5sums.txt"):
        return io.BytesIO((Path.cwd() / "datasets" / "audiospikes" / "md5sums.txt").read_bytes())
    return _urlopen(url, *args, **kwargs)


urllib.request.urlopen = urlopen
'''


def run(args, cwd, env=None) -> tuple:
    """(seconds from start to exit, stdout) of one process; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"published_code.py: {' '.join(map(str, args[:3]))} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def published_epoch_seconds(stdout: str) -> float:
    """The median of the published main.py's epoch times after the first (compilation)."""
    times = [float(t) for t in re.findall(r"- t: ([0-9.]+) sec", stdout)]
    if len(times) < 2:
        sys.exit(f"published_code.py: no epoch times in the published code's output:\n{stdout[-2000:]}")
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", required=True, type=Path, help="a checkout of EIS-Hub/hSNN")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    published = args.published.resolve()
    if not (published / "main.py").is_file() or not (published / "training.py").is_file():
        sys.exit(f"published_code.py: --published {published}: not a checkout of EIS-Hub/hSNN (no main.py)")
    py = sys.executable
    import os
    with tempfile.TemporaryDirectory(prefix="hsnn-published-") as tmp:
        tmp = Path(tmp)
        data = tmp / "datasets" / "audiospikes"
        subprocess.run([py, str(ROOT / "tools" / "make_synthetic_audiospikes.py"), "--dataset", "shd",
                        "--out", str(data), "--gzip"], check=True, stdout=subprocess.DEVNULL)
        hook = tmp / "offline"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(OFFLINE)
        env_published = {**os.environ, "PYTHONPATH": str(hook), "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu"}
        results = {"mts_xor_published": [], "mts_xor_ours": [], "shd_epoch_published": [], "shd_epoch_ours": [],
                   "shd_published": [], "shd_ours": []}
        for r in range(args.rounds):
            _, out = run([py, str(published / "main.py"), *MTS_XOR, "--n_epochs", "4"], tmp, env_published)
            results["mts_xor_published"].append(published_epoch_seconds(out))
            bench = tmp / "bench.json"
            run([py, str(ROOT / "benchmarks" / "benchmark.py"), "--dataset_name", "mts_xor", "--n_layers", "4",
                 "--set", "hierarchy_tau=tanh", "--set", "delta_tau=0.4", "--set", "tau_mem=0.3", "--epochs", "3",
                 "--out", str(bench)], ROOT)
            results["mts_xor_ours"].append(json.loads(bench.read_text())["epoch_seconds"])
            seconds, out = run([py, str(published / "main.py"), *SHD], tmp, env_published)
            results["shd_published"].append(seconds)
            results["shd_epoch_published"].append(published_epoch_seconds(out))
            run([py, str(ROOT / "benchmarks" / "benchmark.py"), "--dataset_name", "shd", "--n_layers", "4", "--n_hid",
                 "32", "--epochs", "3", "--out", str(bench)], ROOT)
            results["shd_epoch_ours"].append(json.loads(bench.read_text())["epoch_seconds"])
            shutil.rmtree(tmp / "results", ignore_errors=True)
            seconds, _ = run([py, str(ROOT / "main.py"), *SHD, "--data_dir", str(tmp / "datasets"), "--results_dir",
                              str(tmp / "ours"), "--progress", "false"], ROOT,
                             {**os.environ, "HSNN_CACHE_DIR": str(tmp / "jax_cache")})
            results["shd_ours"].append(seconds)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in results.items()), flush=True)
    mts_pub, mts_ours = (statistics.median(results[k]) for k in ("mts_xor_published", "mts_xor_ours"))
    shd_epoch_pub, shd_epoch_ours = (statistics.median(results[k]) for k in ("shd_epoch_published", "shd_epoch_ours"))
    shd_pub = statistics.median(results["shd_published"])
    shd_cold, shd_warm = results["shd_ours"][0], statistics.median(results["shd_ours"][1:] or results["shd_ours"])
    print("\n| measurement | published code | ours | faster by |\n|---|---|---|---|")
    print(f"| MTS-XOR 4 layers, s per training epoch | {mts_pub:.3f} | {mts_ours:.3f} | {mts_pub / mts_ours:.1f}x |")
    print(f"| SHD 4x32, s per training epoch | {shd_epoch_pub:.3f} | {shd_epoch_ours:.3f} | "
          f"{shd_epoch_pub / shd_epoch_ours:.1f}x |")
    print(f"| SHD 4x32, 4 epochs, whole run [s], our caches cold (first run) | {shd_pub:.1f} | {shd_cold:.1f} | "
          f"{shd_pub / shd_cold:.1f}x |")
    print(f"| SHD 4x32, 4 epochs, whole run [s], our caches warm (later runs) | {shd_pub:.1f} | {shd_warm:.1f} | "
          f"{shd_pub / shd_warm:.1f}x |")
    if args.out:
        args.out.write_text(json.dumps(dict(results, rounds=args.rounds), indent=1) + "\n")


if __name__ == "__main__":
    main()
