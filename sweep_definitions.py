"""The paper's sweeps as data, and the results table they fill (sweep.py runs them).

A sweep definition (paper/sweeps.json) holds what a figure's runs share ('fixed') and what
they vary ('grid'); `expand` makes its runs, each keyed by its grid point and seed, and
`make_run_config` the configuration a run trains: the published SimArgs() defaults (Config's
defaults and SWEEP_BASE), then 'fixed', then the grid point, then `--set` overrides. A
sweep's folder holds sweep.json (what was run) and runs.jsonl, one line per finished run.
"""

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

from panels import fmt
from utils_initialization import FIELDS, SWEEP_BASE, Config, ConfigError
from utils_io import FileError, locked, read_json

ROOT = Path(__file__).resolve().parent
SWEEPS_FILE = ROOT / "paper" / "sweeps.json"      # the published sweeps
EXPERIMENTS_DIR = ROOT / "experiments"              # sweeps added here, beyond the paper's
PAPER_FILE = ROOT / "paper" / "paper_numbers.json"
QUICK = dict(seeds=2, n_epochs=10, points=3)  # --quick: per grid axis first, middle, last
LINES = "runs.jsonl"
MANIFEST = "sweep.json"


class SweepError(RuntimeError):
    """A command-line or results-folder problem; exit code 2 with a one-line message."""


# --- definitions: published data -> runs -----------------------------------------------------
class Run(NamedTuple):
    key: str          # unique in the sweep, also the run folder's name
    group: str        # the key without the seed: runs of one group train together
    point: dict       # the grid values (seed excluded)
    seed: int
    overrides: dict   # everything given to make_config except the seed
    baseline: bool    # an extra run of the sweep's 'baseline' (Fig. S2e)


def load_definitions(*files, experiments=EXPERIMENTS_DIR) -> dict:
    """Every sweep: the published ones (paper/sweeps.json), the added experiments
    (experiments/*.json) and those of `files` (--sweeps_file), {name: {what, fixed, grid,
    ...}}; a name defined twice is one SweepError line."""
    sources = [SWEEPS_FILE, *sorted(Path(experiments).glob("*.json")), *files]
    definitions, where = {}, {}
    for path in sources:
        for name, definition in definitions_in(path).items():
            if name in definitions:
                raise SweepError(f"--sweeps_file {path}: sweep {name!r} is defined in {where[name]} already; "
                                 "give it another name")
            definitions[name], where[name] = definition, path
    return definitions


def published_names() -> set:
    """The names of the paper's sweeps (paper/sweeps.json): everything else is an added
    experiment, with no published numbers to compare with."""
    return set(definitions_in(SWEEPS_FILE))


def definitions_in(path) -> dict:
    """The sweeps of one definitions file: {name: {what, fixed, grid, ...}}."""
    data = _read_flag_file(path, "sweeps_file", "sweep definitions")
    definitions = {k: v for k, v in data.items() if not k.startswith("_")}
    for name, d in definitions.items():
        problem = definition_problem(d)
        if problem:
            raise SweepError(f"--sweeps_file {path}: sweep {name!r} {problem}")
    return definitions


def definition_problem(d):
    """Why `d` is not a sweep definition, else None: an object with 'what', 'fixed' and a
    'grid' of non-empty lists, whose runs all have keys of their own."""
    if not (isinstance(d, dict) and isinstance(d.get("fixed"), dict) and isinstance(d.get("grid"), dict)
            and isinstance(d.get("what"), str) and all(isinstance(v, list) and v for v in d["grid"].values())
            and isinstance(d.get("baseline", {}), dict)):
        return "is not a definition (an object with 'what', 'fixed' and a 'grid' of non-empty lists)"
    for axis, values in d["grid"].items():
        keys = [fmt(published_value(axis, v)) for v in values]
        repeated = next((v for i, v in enumerate(keys) if v in keys[:i]), None)
        if repeated is not None:
            return f"repeats the value {repeated} of its grid axis {axis!r} (two runs would share one key)"
    return None


def read_manifest(folder: Path, fix: str) -> dict:
    """A sweep folder's sweep.json (what was run: sweep_name, definition, quick, set), checked;
    else one SweepError line naming the file and ending in `fix`."""
    path = Path(folder) / MANIFEST
    try:
        stored = read_json(path, "sweep manifest", fix)
    except FileError as err:
        raise SweepError(err) from None
    ok = (isinstance(stored, dict) and isinstance(stored.get("sweep_name"), str)
          and isinstance(stored.get("quick"), bool) and isinstance(stored.get("set"), dict)
          and definition_problem(stored.get("definition")) is None
          and all(k in FIELDS for k in stored["set"]))
    if not ok:
        raise SweepError(f"{path}: not a sweep manifest (sweep_name, a definition, quick and set); {fix}")
    return stored


def load_paper_numbers(path=PAPER_FILE) -> dict:
    """The published numbers (--paper_file): {panel: {...}}."""
    data = _read_flag_file(path, "paper_file", "published numbers")
    if not all(isinstance(v, dict) for k, v in data.items() if not k.startswith("_")):
        raise SweepError(f"--paper_file {path}: every entry must be an object of a panel's numbers")
    return data


def _read_flag_file(path, flag: str, what: str) -> dict:
    """A JSON object from the file a flag names, else one SweepError line."""
    if not Path(path).is_file():
        raise SweepError(f"--{flag} {path}: no such file" if not Path(path).exists()
                         else f"--{flag} {path}: not a regular file")
    try:
        data = read_json(path, what, f"give --{flag} a file of {what}")
    except FileError as err:
        raise SweepError(f"--{flag} {err}") from None
    if not isinstance(data, dict):
        raise SweepError(f"--{flag} {path}: not the {what} (a JSON object)")
    return data


def published_value(field, value):
    """The published sweeps passed distrib_tau=True, which the published code treated as
    homogeneous time constants: 'none' here."""
    return "none" if field == "distrib_tau" and value is True else value


def group_key(point: dict, baseline: bool) -> str:
    """'n_layers=3__delta_tau=-0.5' (grid order); 'all' for a grid of seeds only."""
    parts = (["baseline"] if baseline else []) + [f"{k}={fmt(v)}" for k, v in point.items()]
    return "__".join(parts) or "all"


def reduced(definition: dict) -> dict:
    """--quick: QUICK['seeds'] seeds, at most QUICK['points'] values per other grid axis
    (first, middle, last) and at most QUICK['n_epochs'] epochs."""
    def pick(values):
        if len(values) <= QUICK["points"]:
            return list(values)
        return [values[0], values[len(values) // 2], values[-1]]

    grid = {k: (v[:QUICK["seeds"]] if k == "seed" else pick(v)) for k, v in definition["grid"].items()}
    fixed = dict(definition["fixed"], n_epochs=min(definition["fixed"].get("n_epochs", QUICK["n_epochs"]),
                                                   QUICK["n_epochs"]))
    return dict(definition, fixed=fixed, grid=grid)


MAX_SEEDS = 10_000  # --seeds: more runs per grid point than any sweep could train


def parse_seeds(text: str) -> list:
    """'5-14' or '5,7,9-11' -> sorted distinct seeds (at most MAX_SEEDS, each a valid seed)."""
    seeds = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if not 0 <= lo <= hi < 2 ** 32:
                raise argparse.ArgumentTypeError(f"expected seeds in 0 .. 2**32 - 1 and ranges from low to high, "
                                                 f"such as 5-14, got {text!r}")
            if hi - lo + 1 + len(seeds) > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"{text!r} asks for more than {MAX_SEEDS} seeds")
            seeds.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 5-14 or 5,7,9-11, got {text!r}") from None
    return sorted(seeds)


def seeds_text(seeds) -> str:
    """[5, 6, 7, 9] -> '5-7,9': runs of consecutive seeds as ranges."""
    seeds = sorted(seeds)
    parts, start = [], seeds[0]
    for a, b in zip(seeds, seeds[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def with_seeds(definition: dict, seeds: list) -> dict:
    """--seeds: the sweep's grid with other seeds, marked as an extension (its results go to
    their own folder and are reported apart from the published grid's)."""
    published = definition["grid"].get("seed", [0])
    overlap = sorted(set(seeds) & set(published))
    if overlap:
        raise SweepError(f"--seeds: seed {overlap[0]} is in the published grid of this sweep already "
                         f"(seeds {seeds_text(published)}); give only seeds beyond it")
    text = seeds_text(seeds)
    return dict(definition, grid={**definition["grid"], "seed": list(seeds)}, extension_seeds=text,
                extension=f"seeds {text}, beyond the published grid's seeds {seeds_text(published)}",
                what=f"{definition['what']} [EXTENSION: seeds {text}, not in the published grid]")


def expand(definition: dict, sets: dict = None) -> list:
    """Every run of a sweep, in a fixed order: the grid's cartesian product, then the
    baseline runs (one per seed)."""
    sets = sets or {}
    grid = {k: [published_value(k, v) for v in vs] for k, vs in definition["grid"].items()}
    clash = sorted(set(sets) & (set(grid) | {"seed"}))
    if clash:
        raise SweepError(f"--set {clash[0]}: it is a grid axis of this sweep; it cannot be fixed")
    axes = [k for k in grid if k != "seed"]
    seeds = grid.get("seed", [0])
    points = [dict(zip(axes, values)) for values in itertools.product(*(grid[k] for k in axes))]
    runs = [_make_run(definition, p, s, sets, False) for p in points for s in seeds]
    if "baseline" in definition:
        runs += [_make_run(definition, dict(definition["baseline"]["overrides"]), s, sets, True)
                 for s in seeds]
    return runs


def _make_run(definition, point, seed, sets, baseline) -> Run:
    fixed = {k: published_value(k, v) for k, v in definition["fixed"].items()}
    overrides = {**fixed, **point, **sets}
    group = group_key(point, baseline)
    key = f"{group}__seed={seed}" if group != "all" else f"seed={seed}"
    return Run(key, group, point, seed, overrides, baseline)


def make_run_config(overrides: dict, seed: int):
    """A sweep run's Config, built as the published sweeps built theirs: the published
    SimArgs() defaults (Config's defaults and SWEEP_BASE), then the sweep's values. The task
    presets of main.py do not apply."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(unknown[0], "is not a configuration field")
    return Config(**{**SWEEP_BASE, **overrides, "seed": seed})


def conversion_notes(definition: dict) -> list:
    """What the mapping from published data changed or adds, in words (--list, docs)."""
    notes = []
    values = [definition["fixed"]] + [{k: v} for k, vs in definition["grid"].items() for v in vs]
    if any(d.get("distrib_tau") is True for d in values):
        notes.append("distrib_tau=True (published) runs as 'none', as the published code treated it")
    if definition.get("added"):
        notes.append("added here, not in the published code: " + definition["added"])
    if "baseline" in definition:
        notes.append("added here: the baseline runs (" + definition["baseline"]["what"] + ")")
    return notes


# fields that say where the data is, not what is trained
WHERE_NOT_WHAT = ("data_dir",)


def changed_fields(lines: list, definition: dict) -> dict:
    """{field: the values the runs trained} for every field in which a results line's
    configuration differs from what `definition` trains at that grid point and seed."""
    published = {r.group: r.overrides for r in expand(definition)}
    changed = {}
    for line in lines:
        if line["group"] not in published:
            changed.setdefault("grid point", set()).add(line["group"])
            continue
        reference = make_run_config(published[line["group"]], line["seed"]).to_dict()
        for k, v in line["config"].items():
            if k in reference and v != reference[k] and k not in WHERE_NOT_WHAT:
                changed.setdefault(k, set()).add(json.dumps(v))
    return {k: sorted(json.loads(v) if k != "grid point" else v for v in vs) for k, vs in sorted(changed.items())}



# --- the results table: one line per finished run --------------------------------------------
NUMBER = (int, float)
# What a results line must hold, and of which type: the fields that the report, the figures,
# resume and --list read. Fields added later (and lines of older versions without them) are
# optional; when present, they must have their type (OPTIONAL_FIELDS).
RECORD_FIELDS = dict(key=str, group=str, point=dict, seed=int, baseline=bool, overrides=dict, test_acc=NUMBER,
                     valid_acc=NUMBER, best_epoch=int, n_epochs=int, median_tau_per_layer=list)
OPTIONAL_FIELDS = dict(config=dict, median_tau_init=list, tau_per_neuron=list, w_rec_abs_eigenvalues=dict,
                       provenance=list, seconds=NUMBER, finished=str, measures=dict)


class RecordError(SweepError):
    """A run record of runs.jsonl that lacks a field or holds one of the wrong type."""


def record_problem(line: dict):
    """What is wrong with a run record (a JSON object with a key), else None."""
    def kind(types):
        return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))

    for field, types in list(RECORD_FIELDS.items()) + list(OPTIONAL_FIELDS.items()):
        if field not in line:
            if field in RECORD_FIELDS:
                return f"lacks its {field!r}"
            continue
        value = line[field]
        if value is None and field in OPTIONAL_FIELDS:
            continue
        wrong_bool = isinstance(value, bool) and types is not bool
        if wrong_bool or not isinstance(value, types):
            return f"has a {type(value).__name__} for {field!r}, where a {kind(types)} belongs"
    return None


def read_lines(folder: Path) -> dict:
    """{key: line} from runs.jsonl and any runs*.jsonl beside it (shards copied together); the
    first line of a key wins. A line that is not a run record (a torn last line after a crash,
    junk) is skipped, with one warning; a run record that lacks a field or holds one of the
    wrong type (edited by hand, or from an older version) is a RecordError naming the file
    and the line. Lines of older versions without a configuration get the one the sweep
    definition gives them."""
    lines, skipped = {}, 0
    for path in sorted(Path(folder).glob("runs*.jsonl")):
        for number, raw in enumerate(path.read_bytes().splitlines(), 1):
            line = parse_line(raw)
            if line is None:
                skipped += bool(raw.strip())
                continue
            problem = record_problem(line)
            if problem is None and "config" not in line:
                try:
                    line["config"] = make_run_config(line["overrides"], line["seed"]).to_dict()
                except ConfigError as err:
                    problem = f"records no configuration, and its overrides are not one ({err})"
            if problem:
                raise RecordError(f"{path}, line {number}: the run record {line['key']!r} {problem}; correct or "
                                  "remove that line (the run is then trained again)")
            lines.setdefault(line["key"], line)
    if skipped:
        print(f"warning: {folder}: skipped {skipped} line(s) of runs*.jsonl that are not run records",
              file=sys.stderr)
    return lines


def parse_line(raw: bytes):
    """A runs.jsonl line as a run record (a JSON object with a text key), else None."""
    try:
        line = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return line if isinstance(line, dict) and isinstance(line.get("key"), str) else None


def record_keys(content: bytes) -> set:
    """The keys of the run records in the bytes of a runs.jsonl."""
    return {line["key"] for line in map(parse_line, content.splitlines()) if line is not None}


def append_line(path: Path, line: dict) -> bool:
    """Append one JSON line atomically: under an exclusive lock (other drivers and shards
    append to the same file), a torn tail left by a crash is cut first, a key already
    present is not written twice, and the line goes down in one write, then fsync.
    Returns whether the line was written."""
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    with locked(path) as f:
        f.seek(0)
        content = f.read()
        if content and not content.endswith(b"\n"):
            content = content[:content.rfind(b"\n") + 1]
            f.truncate(len(content))
        if line["key"] in record_keys(content):
            return False
        os.write(f.fileno(), data)  # O_APPEND: one write, at the end of the file
        os.fsync(f.fileno())
    return True
