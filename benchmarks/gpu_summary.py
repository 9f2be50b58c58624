"""The table of benchmarks/gpu_check.sh: the golden tests at both precisions, and each
benchmark's speed, its peak GPU memory and the GPU's utilisation while it ran.

    python3 benchmarks/gpu_summary.py OUT      # OUT: gpu_check.sh's folder; prints Markdown
"""

import csv
import json
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path


def golden(path: Path) -> str:
    """'7 passed, 0 failed' of a pytest JUnit file, naming the failed cases."""
    if not path.exists():
        return "not run"
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = suite.findall("testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    text = f"{len(cases) - len(failed)} passed, {len(failed)} failed"
    return text + (f" ({', '.join(failed)})" if failed else "")


def usage(path: Path) -> list:
    """(unix time, utilisation %, memory MiB) of nvidia-smi's samples."""
    rows = []
    if path.exists():
        for row in csv.reader(path.read_text().splitlines()):
            try:
                stamp = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                rows.append((stamp, float(row[1]), float(row[2])))
            except (ValueError, IndexError):
                continue
    return rows


def during(samples: list, start: float, end: float) -> tuple:
    """(mean utilisation %, largest memory MiB) of the samples between start and end."""
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None, None
    return sum(s[1] for s in inside) / len(inside), max(s[2] for s in inside)


def main(out: Path):
    print(f"golden tests, --matmul_precision highest: {golden(out / 'golden_highest.xml')}  ")
    print(f"golden tests, default precision (TF32 products): {golden(out / 'golden_default.xml')}\n")
    samples = usage(out / "gpu_usage.csv")
    print("| benchmark | s/epoch | compile s | samples/s | peak GPU memory MB | GPU utilisation % | GPU memory used MiB |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        if "epoch_seconds" not in r:
            continue
        util, memory = during(samples, r.get("started", 0), r.get("ended", 0))
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        print(f"| {path.stem} | {r['epoch_seconds']} | {fmt(r.get('compile_seconds'), '')} | {r['samples_per_second']} | "
              f"{fmt(r.get('device_peak_mb'), '.0f')} | {fmt(util, '.0f')} | {fmt(memory, '.0f')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
