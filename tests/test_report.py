"""report.py through `sweep.py --report`: a report built from small result folders the test
writes (complete, partial, reduced, missing, without published numbers) has the expected
sections, statuses and numbers; writing it again changes nothing; verdicts follow the numbers."""

import json

import numpy as np
import pytest

import report
import sweep
import sweep_definitions

PAPER = json.loads(sweep_definitions.PAPER_FILE.read_text())


@pytest.fixture(scope="module")
def definitions():
    return sweep_definitions.load_definitions()


def write_results(folder, definition, accuracy, keep=lambda run: True, n_epochs=60, taus=None, sets=None):
    """runs.jsonl lines, as the sweep writes them, for the runs `keep` selects; test accuracy
    [%] from `accuracy(run)`, each hidden layer's median time constant [s] from `taus(run)`."""
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    for run in sweep_definitions.expand(definition, sets):
        if not keep(run):
            continue
        cfg = sweep_definitions.make_run_config(run.overrides, run.seed)
        n = cfg.n_layers - 1
        (folder / "runs" / run.key).mkdir(exist_ok=True)
        (folder / "runs" / run.key / "provenance.json").write_text(json.dumps([dict(
            commit="0123456789abcdef", dirty=False, python="3.11.7", jax="0.10.2", jaxlib="0.10.2",
            numpy="2.4.6", backend="cpu", device="cpu", host="ci")]))
        metrics = dict(best_valid_acc=0.5, test_acc=accuracy(run) / 100, best_epoch=1, epochs=[{}] * n_epochs,
                       seconds_total=1.0, median_tau_init=[cfg.tau_mem] * n,
                       median_tau_per_layer=taus(run) if taus else [0.05 * (i + 1) for i in range(n)])
        sweep_definitions.append_line(folder / "runs.jsonl", sweep.result_line(run, metrics, folder / "runs" / run.key))


def hierarchy_helps(run):
    """Accuracy rising with delta_tau, more with n_layers 3, a seed-dependent wobble."""
    slope = 20 if run.point.get("n_layers") == 3 else 5
    return 85 + slope * run.point["delta_tau"] + 0.1 * run.seed


def make_report(tmp_path, definitions):
    path = report.write_folder_report(tmp_path, definitions, PAPER)
    return path, path.read_text()


def section_of(text, title):
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.fixture
def results(tmp_path, definitions):
    write_results(tmp_path / "hSNN_Figure_2b", definitions["hSNN_Figure_2b"], hierarchy_helps)
    write_results(tmp_path / "hSNN_Figure_2a", definitions["hSNN_Figure_2a"],
                  lambda run: 50 + 60 * run.point["tau_mem"], keep=lambda run: run.point["n_layers"] == 3)
    write_results(tmp_path / "hSNN_Figure_S2a_quick", sweep_definitions.reduced(definitions["hSNN_Figure_S2a"]),
                  lambda run: 80 + 10 * run.point["delta_tau"] - 20 * run.point["noise_rate"], n_epochs=10)
    return tmp_path


def test_sections_statuses_and_numbers(results, definitions):
    path, text = make_report(results, definitions)
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    listed = {name for sec in report.SECTIONS for name in sec.sweeps}
    added = [report.experiment_section(n, d).title for n, d in definitions.items() if n not in listed]
    assert titles == [s.title for s in report.SECTIONS] + added  # every defined sweep, the paper's first
    assert titles[:5] == ["Fig. 2a", "Fig. 2b", "Fig. 2c", "Fig. 3b", "Fig. 3c"] and titles[len(report.SECTIONS) - 2:len(report.SECTIONS)] == ["Table 1", "Table 2"]
    top = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| Fig.") or line.startswith("| Table")}
    assert "complete (180 of 180 runs)" in top["Fig. 2b"] and "partial (40 of 80 runs)" in top["Fig. 2a"]
    assert "reduced (--quick): 12 runs" in top["Fig. S2a"]
    assert "not run (needs the SHD data set" in top["Fig. 2c"]
    fig2b = section_of(text, "Fig. 2b")
    # n_layers 4 at delta_tau 0.4: 85 + 5 * 0.4 + 0.1 * seed over seeds 0..9 -> median 87.45; paper 94.4
    assert "| 3 hidden layers | 0.4 | 87.45 (median) | 87.22-87.67 | 10 | 94.40 |  | -6.95 |" in fig2b
    # the published code run here (paper/published_runs_here.json) at 2 hidden layers, delta_tau
    # -0.2, seeds 0-9: the median of its ten accuracies, (77.9 + 80.7) / 2
    assert "| 2 hidden layers | -0.2 | 81.45 (median) | 81.22-81.67 | 10 | 83.80 |  | -2.35 | 79.30 |" in fig2b
    assert "18 points compared" in fig2b and "![hSNN_Figure_2b](hSNN_Figure_2b/figure.png)" in fig2b
    assert "Provenance: commit 0123456789; Python 3.11.7, JAX 0.10.2" in fig2b
    assert "`python3 sweep.py --sweep_name hSNN_Figure_2b`" in fig2b
    s2a = section_of(text, "Fig. S2a")
    assert "not recoverable" in s2a and "hSNN_Figure_S2a_quick/figure.png" in s2a and "--quick" in s2a


def test_writing_again_changes_nothing(results, definitions):
    path, first = make_report(results, definitions)
    _, second = make_report(results, definitions)
    assert first == second and [p.name for p in results.glob(".REPORT*")] == []


def test_verdicts_follow_the_numbers(tmp_path, definitions, results):
    _, text = make_report(results, definitions)
    fig2b = section_of(text, "Fig. 2b")
    assert "**Verdict:** holds: rank correlation 2 hidden layers: +0.9" in fig2b
    assert "smallest rank correlation +0.9" in fig2b and "(95 % interval +0.9" in fig2b
    assert "**Verdict:** holds" in section_of(text, "Fig. S2a") and "(on reduced --quick runs)" in section_of(text, "Fig. S2a")
    flipped = tmp_path / "flipped"
    write_results(flipped / "hSNN_Figure_2b", definitions["hSNN_Figure_2b"], lambda run: 170 - hierarchy_helps(run))
    _, text = make_report(flipped, definitions)
    assert "**Verdict:** not supported: rank correlation 2 hidden layers: -0.9" in section_of(text, "Fig. 2b")
    assert "**Verdict:** not decided: no runs yet." in section_of(text, "Fig. 2a")


def test_rules_and_statistics():
    assert list(report.ranks([3, 1, 2, 2])) == [4, 1, 2.5, 2.5]
    assert report.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    assert report.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(report.spearman([1, 1, 1], [1, 2, 3]))
    for sec in report.SECTIONS:
        if sec.claim:
            assert report.rule_text(sec.claim)


@pytest.mark.parametrize("manifest", ["[]", "{broken"])
def test_a_damaged_sweep_folder_still_reports(results, definitions, manifest):
    """A sweep.json that is not a manifest and junk in runs.jsonl: the sweep as defined now,
    the run records that are readable."""
    (results / "hSNN_Figure_2b" / "sweep.json").write_text(manifest)
    with open(results / "hSNN_Figure_2b" / "runs.jsonl", "a") as f:
        f.write('42\n{"a": 1}\n\x00junk\n')
    _, text = make_report(results, definitions)
    assert "complete (180 of 180 runs)" in section_of(text, "Fig. 2b")


def test_an_extension_is_reported_apart_from_the_published_grid(tmp_path, definitions):
    """Seeds trained with --seeds get their own subsection and verdicts (alone, and together
    with the published seeds); the section's status and verdict stay the published grid's.
    The tau verdict counts the runs whose deepest hidden layer ends slowest."""
    fig3b = definitions["hSNN_Figure_3b"]
    slow_last = lambda run: [0.05, 0.07, 0.09]  # noqa: E731
    slow_middle = lambda run: [0.05, 0.09, 0.07] if run.seed % 2 else [0.05, 0.07, 0.09]  # noqa: E731
    write_results(tmp_path / "hSNN_Figure_3b", fig3b, lambda run: 99.0, taus=slow_last)
    ext = sweep_definitions.with_seeds(fig3b, list(range(5, 15)))
    folder = tmp_path / "hSNN_Figure_3b_seeds5-14"
    write_results(folder, ext, lambda run: 98.0, taus=slow_middle)
    (folder / "sweep.json").write_text(json.dumps(dict(sweep_name="hSNN_Figure_3b", definition=ext,
                                                       quick=False, set={})))
    _, text = make_report(tmp_path, definitions)
    fig = section_of(text, "Fig. 3b")
    assert "### `hSNN_Figure_3b`: complete (5 of 5 runs)" in fig
    assert "the deepest hidden layer is the slowest in 5 of 5 runs" in fig
    assert "### Extension `hSNN_Figure_3b_seeds5-14`: 10 runs, seeds 5-14" in fig
    assert "`python3 sweep.py --sweep_name hSNN_Figure_3b --seeds 5-14`" in fig
    assert "**Verdict on the extension alone (10 runs):**" in fig
    assert "slowest in 5 of 10 runs" in fig and "slowest in 10 of 15 runs" in fig
    top = next(line for line in text.splitlines() if line.startswith("| Fig. 3b"))
    assert "complete (5 of 5 runs)" in top and "seeds5-14" not in top


@pytest.mark.parametrize("with_manifest", [True, False])
def test_runs_changed_with_set_are_reported_as_modified(tmp_path, definitions, with_manifest):
    """Runs trained with --set are never 'complete': the status, the verdict and the command
    name the changed fields, read from the runs' own configurations (so also when sweep.json
    is gone)."""
    sets = {"n_epochs": 1, "n_hid": 4}
    folder = tmp_path / "hSNN_Figure_3b"
    write_results(folder, definitions["hSNN_Figure_3b"], lambda run: 60.0, sets=sets)
    if with_manifest:
        (folder / "sweep.json").write_text(json.dumps(dict(sweep_name="hSNN_Figure_3b", quick=False, set=sets,
                                                           definition=definitions["hSNN_Figure_3b"])))
    _, text = make_report(tmp_path, definitions)
    fig = section_of(text, "Fig. 3b")
    assert "complete" not in fig
    assert "### `hSNN_Figure_3b`: modified (n_epochs=1, n_hid=4): 5 of 5 runs, not the published definition" in fig
    assert "`python3 sweep.py --sweep_name hSNN_Figure_3b --set n_epochs=1 --set n_hid=4`" in fig
    assert "(on modified runs: n_epochs=1, n_hid=4)" in fig
    top = next(line for line in text.splitlines() if line.startswith("| Fig. 3b"))
    assert "modified (n_epochs=1, n_hid=4)" in top


def test_the_recurrence_section_ranks_eigenvalues_by_depth(tmp_path, definitions):
    """Fig. S6: each run's largest |eigenvalue| of W_rec per hidden layer against the
    paper's; the verdict ranks them by depth, per task."""
    folder = tmp_path / "hSNN_Figure_S6_mts_xor"
    write_results(folder, definitions["hSNN_Figure_S6_mts_xor"], lambda run: 80.0)
    lines = [json.loads(t) for t in (folder / "runs.jsonl").read_text().splitlines()]
    for line in lines:  # deeper layers larger, seed by seed
        base = 0.2 + 0.01 * line["seed"]
        line["w_rec_abs_eigenvalues"] = {which: [[base + 0.1 * i, 0.1, 0.05] for i in range(3)]
                                         for which in ("stored", "masked")}
    (folder / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, text = make_report(tmp_path, definitions)
    section = section_of(text, "Fig. S6")
    assert "`hSNN_Figure_S6_mts_xor`: complete (10 of 10 runs)" in section
    assert "| largest abs. eigenvalue of W_rec, stored | 1 | 0.25 (mean) |" in section
    assert "| 0.27 |" in section  # the paper's largest eigenvalue of the first hidden layer
    assert "**Verdict:** holds: mts_xor: rank correlation +0.9" in section
    assert "the deepest layer's eigenvalue the largest in 10 of 10 runs" in section


def test_a_claim_that_rests_on_seed_noise_holds_only_within_noise(tmp_path, definitions):
    """Each verdict carries a 95 % bootstrap interval over seeds; 'holds' only when the
    interval clears the rule's threshold. Fig. 3b with a last layer only a little slower
    than the first in most seeds, against one with a clear ordering."""
    fig3b = definitions["hSNN_Figure_3b"]
    noisy = {0: [0.05, 0.06, 0.052], 1: [0.05, 0.04, 0.049], 2: [0.05, 0.06, 0.051], 3: [0.05, 0.045, 0.048],
             4: [0.05, 0.07, 0.06]}
    write_results(tmp_path / "noisy" / "hSNN_Figure_3b", fig3b, lambda run: 99.0, taus=lambda run: noisy[run.seed])
    _, text = make_report(tmp_path / "noisy", definitions)
    fig = section_of(text, "Fig. 3b")
    assert "**Verdict:** holds within noise:" in fig and "deepest minus first hidden layer [ms] +0.00" not in fig
    top = next(line for line in text.splitlines() if line.startswith("| Fig. 3b"))
    assert top.endswith("| holds within noise |")
    clear = lambda run: [0.03 + 0.001 * run.seed, 0.05, 0.08 + 0.002 * run.seed]  # noqa: E731
    write_results(tmp_path / "clear" / "hSNN_Figure_3b", fig3b, lambda run: 99.0, taus=clear)
    _, text = make_report(tmp_path / "clear", definitions)
    assert "**Verdict:** holds: rank correlation +0.9" in section_of(text, "Fig. 3b")


def test_the_bootstrap_resamples_seeds_within_each_point():
    lines = [dict(config=dict(x=x, seed=s), point=dict(x=x), seed=s, baseline=False, test_acc=0.5)
             for x in (1, 2) for s in range(5)]
    rng, groups = np.random.default_rng(0), report.seed_groups(lines)
    assert [len(g) for g in groups] == [5, 5]
    for _ in range(20):
        sample = report.resample_seeds(groups, rng)
        assert sorted(line["config"]["x"] for line in sample) == [1] * 5 + [2] * 5
    seen = {line["seed"] for _ in range(50) for line in report.resample_seeds(groups, rng)}
    assert seen == set(range(5))


def tracked_files(root):
    """The files git tracks in the checkout `root` (None outside a git checkout)."""
    import shutil
    import subprocess
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


@pytest.mark.slow
def test_a_clone_rebuilds_every_committed_report_file_byte_for_byte(tmp_path, root):
    """The tracked files alone (what a fresh clone holds), then `sweep.py --report`: REPORT.md,
    every sweep's figure.png, figure.pdf and summary.csv come out byte for byte as committed,
    and nothing else appears beside them but the empty run folders' parent."""
    import shutil
    import subprocess
    import sys
    tracked = tracked_files(root)
    if tracked is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    for name in tracked:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, clone / name)
    report_files = [n for n in tracked if n.startswith("results/") and n.rsplit("/", 1)[-1] in
                    ("REPORT.md", "figure.png", "figure.pdf", "summary.csv")]
    for name in report_files:  # rebuilt from nothing
        (clone / name).unlink()
    done = subprocess.run([sys.executable, "sweep.py", "--report"], cwd=clone,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    differ = [n for n in report_files if not (clone / n).exists() or (clone / n).read_bytes() != (root / n).read_bytes()]
    assert differ == [], f"rebuilt differently from the committed files: {differ}"
    made = {str(p.relative_to(clone)) for p in (clone / "results").rglob("*") if p.is_file()}
    assert made <= {n for n in tracked if n.startswith("results/")} | {
        str(p.relative_to(clone)) for p in (clone / "results").rglob(".sweep.json.lock")}
