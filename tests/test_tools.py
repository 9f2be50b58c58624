"""tools/mutation_test.py: its lists of what to mutate name code that exists, and its sample
takes the mutants it says it takes (mutmut itself is not run here)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import mutation_test  # noqa: E402

SEP = "\u01c1"  # mutmut's separator of a class and its method


def test_every_listed_function_and_class_exists():
    """A rename that the lists did not follow leaves that code out of every mutation run."""
    assert mutation_test.unknown_names(ROOT, list(mutation_test.MODULES)) == []
    # the lists cover the formulas that were renamed or added since they were first written
    assert {"decay_grad_scales", "decay_grad_rule", "step_programs", "batch_calls"} <= set(
        mutation_test.FORMULAS["training"])
    assert {"batch_plan", "FrequencyShift"} <= set(mutation_test.FORMULAS["utils_dataset"])


def test_a_listed_name_the_module_no_longer_defines_is_reported(tmp_path):
    for name in ("training", "utils_dataset"):
        shutil.copy(ROOT / f"{name}.py", tmp_path)
    path = tmp_path / "training.py"
    path.write_text(path.read_text().replace("def decay_grad_rule(", "def renamed_rule("))
    assert mutation_test.unknown_names(tmp_path, ["training", "utils_dataset"]) == ["training.decay_grad_rule"]
    assert mutation_test.unknown_names(tmp_path, ["utils_dataset"]) == []


def test_a_mutants_function_is_read_from_its_name():
    assert mutation_test.function_of("training.x_loss_fn__mutmut_3") == "loss_fn"
    assert mutation_test.function_of("training.x__train_epoch__mutmut_12") == "_train_epoch"
    assert mutation_test.function_of(f"utils_dataset.x{SEP}SpikeCounts{SEP}__len____mutmut_1") == "SpikeCounts"


def test_the_sample_takes_every_kth_mutant_of_the_functions_asked_for(tmp_path):
    keys = ([f"training.x_loss_fn__mutmut_{i}" for i in range(1, 7)]
            + [f"training.x_decay_grad_rule__mutmut_{i}" for i in range(1, 5)]
            + [f"training.x{SEP}Tally{SEP}add__mutmut_{i}" for i in range(1, 4)])
    (tmp_path / "mutants").mkdir()
    (tmp_path / "mutants" / "training.py.meta").write_text(json.dumps({"exit_code_by_key": dict.fromkeys(keys)}))
    take = mutation_test.sample
    assert take(tmp_path, ["training"], 1) == sorted(keys)
    assert take(tmp_path, ["training"], 2, 1, ["decay_grad_rule", "Tally"]) == sorted(
        ["training.x_decay_grad_rule__mutmut_1", "training.x_decay_grad_rule__mutmut_3",
         f"training.x{SEP}Tally{SEP}add__mutmut_1", f"training.x{SEP}Tally{SEP}add__mutmut_3"])
    assert take(tmp_path, ["training"], 3, 2, ["loss_fn"]) == ["training.x_loss_fn__mutmut_2",
                                                               "training.x_loss_fn__mutmut_5"]
    assert take(tmp_path, ["training"], 1, 1, ["loss_fn"]) == sorted(keys[:6])


def test_the_first_run_checks_a_mutant_of_the_functions_asked_for():
    assert mutation_test.first_mutants(["training"], 1) == ["training.x_*__mutmut_1"]
    assert mutation_test.first_mutants(["training", "utils_dataset"], 3, ["FrequencyShift", "batch_plan"]) == [
        "utils_dataset.x_FrequencyShift__mutmut_3", f"utils_dataset.x{SEP}FrequencyShift{SEP}*__mutmut_3"]


@pytest.mark.parametrize("args, message", [
    (["--functions", "no_such_function"], "--functions no_such_function: not a listed function or class of"),
    (["--modules", "training", "--functions", "train_hsnn"], "--functions train_hsnn: not a listed function"),
])
def test_a_function_that_is_not_mutated_is_refused_in_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "mutation_test.py"), *args,
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("mutation_test.py: " + message) and done.stderr.count("\n") == 1
    assert not (tmp_path / "work").exists()


def test_a_revision_without_a_listed_function_is_refused_before_mutmut_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(mutation_test.MODULES, "training", [*mutation_test.MODULES["training"], "gone_rule"])
    with pytest.raises(SystemExit) as stop:
        mutation_test.prepare("HEAD", tmp_path / "work", ["training", "utils_dataset"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("mutation_test.py: HEAD defines no training.gone_rule: bring the lists "
                                       "(FORMULAS, REPORT) up to date\n")
    assert not (tmp_path / "work" / "setup.cfg").exists()  # so that the next run prepares the copy again
