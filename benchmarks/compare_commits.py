"""Training speed of two versions of this code, measured alternately in the same minutes:

    python3 benchmarks/compare_commits.py BASE [--rounds 3] [--head HEAD]

BASE and HEAD (default: the working tree) are git revisions. Each is checked out into a
temporary worktree once; then `benchmarks/benchmark.py` runs for MTS-XOR (4 layers) and SHD
(3 hidden layers of 32 and of 128; `--cases` picks some) from each version in turn, `--rounds`
times, so that a load that comes and goes on the machine hits both alike. Prints each
version's median steady-state seconds per training epoch over the rounds, HEAD's ratio to
BASE, and the median over the rounds of the ratio within each round (the two versions measured
next to each other: steadier when the machine's speed drifts during the comparison).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"mts_xor_4layers": ["--dataset_name", "mts_xor", "--n_layers", "4", "--epochs", "4"],
         "shd_3x32": ["--dataset_name", "shd", "--n_layers", "4", "--n_hid", "32", "--epochs", "3"],
         "shd_3x128": ["--dataset_name", "shd", "--n_layers", "4", "--n_hid", "128", "--epochs", "2"]}


def worktree(rev: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), rev], check=True)
    return folder


def epoch_seconds(tree: Path, args: list, out: Path) -> float:
    subprocess.run([sys.executable, str(tree / "benchmarks" / "benchmark.py"), *args, "--out", str(out)],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["epoch_seconds"]


def summary(base: list, head: list) -> tuple:
    """(BASE's median, HEAD's median, their ratio, the median of HEAD / BASE within each round)
    of the seconds per epoch of the rounds, in the order they ran."""
    b, h = statistics.median(base), statistics.median(head)
    return b, h, h / b, statistics.median(y / x for x, y in zip(base, head))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("--head", default=None, help="a revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsnn-compare-") as tmp:
        trees = {"base": worktree(args.base, Path(tmp) / "base")}
        trees["head"] = worktree(args.head, Path(tmp) / "head") if args.head else ROOT
        try:
            times = {(case, v): [] for case in args.cases for v in trees}
            for r in range(args.rounds):
                for case, case_args in ((c, CASES[c]) for c in args.cases):
                    for version, tree in trees.items():
                        t = epoch_seconds(tree, case_args, Path(tmp) / f"{case}_{version}_{r}.json")
                        times[case, version].append(t)
                        print(f"round {r + 1}: {case} {version} {t:.4f} s/epoch", flush=True)
            print(f"\n| configuration | {args.base} s/epoch | {args.head or 'working tree'} s/epoch | ratio "
                  "| median ratio within a round |")
            print("|---|---|---|---|---|")
            for case in args.cases:
                b, h, ratio, paired = summary(times[case, "base"], times[case, "head"])
                print(f"| {case} | {b:.4f} | {h:.4f} | {ratio:.3f} | {paired:.3f} |")
        finally:
            for version, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
