"""The command line, run as a subprocess the way users run it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import pause_at_epoch, wait_for
from main import build_parser, config_from_args, summary_line
from utils_initialization import make_config


def run_main(root, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, str(root / "main.py"), *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def parse(*args):
    return config_from_args(build_parser().parse_args(list(args)))


@pytest.mark.parametrize("text,value", [("false", False), ("0", False), ("False", False),
                                        ("true", True), ("1", True), ("TRUE", True)])
def test_booleans_parse_as_written(text, value):
    assert parse("--recurrent", text).recurrent is value
    assert parse("--train_alpha", text).train_alpha is value


def test_defaults_follow_the_published_main():
    cfg = parse()
    assert (cfg.dataset_name, cfg.seed, cfg.n_epochs, cfg.n_layers, cfg.dropout) == ("shd", 0, 10, 4, 0.1)


def test_presets_then_flags():
    cfg = parse("--dataset_name", "mts_xor", "--n_hid", "12")
    assert (cfg.n_in, cfg.n_out, cfg.decoder, cfg.batch_size, cfg.n_hid) == (40, 2, "vmem_time", 512, 12)
    conv = parse("--convolution", "true", "--dropout", "0.1")
    assert (conv.nb_steps, conv.dt, conv.freq_shift, conv.dropout) == (200, pytest.approx(0.014), 10, 0.1)
    assert conv.use_test_as_valid and conv.hierarchy_conv == "kernel" and conv.delta_dil == 2


@pytest.mark.slow
@pytest.mark.parametrize("args,flag", [
    (["--n_layers", "1"], "--n_layers"),
    (["--n_hid", "0"], "--n_hid"),
    (["--tau_mem", "0"], "--tau_mem"),
    (["--tau_out", "-0.1"], "--tau_out"),
    (["--dropout", "1.0"], "--dropout"),
    (["--dataset_name", "cifar"], "--dataset_name"),
    (["--decoder", "mean"], "--decoder"),
    (["--normalizer", "group"], "--normalizer"),
    (["--recurrent", "maybe"], "--recurrent"),
    (["--n_hid", "many"], "--n_hid"),
    (["--bogus", "1"], "--bogus"),
    (["--dataset_name", "mts_xor", "--n_in", "30"], "--n_in"),
    (["--resume"], "--resume"),
    (["--restart"], "--restart"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999"], "--seed"),
])
def test_invalid_flags_exit_2_with_one_line(root, args, flag):
    result = run_main(root, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_summary_line_counts_layers_and_epochs_in_words():
    one = summary_line(make_config("mts_xor", n_layers=2, n_epochs=1), "results/x")
    assert one.startswith("training mts_xor: 1 hidden layer x 10 LIF, tau_mem 0.3 s, no hierarchy, 1 epoch, seed 0;")
    many = summary_line(make_config("shd", n_layers=4, n_hid=32, n_epochs=5, hierarchy_tau="tanh", delta_tau=0.15,
                                    seed=3), "results/y")
    assert many == ("training shd: 3 hidden layers x 32 LIF, tau_mem 0.1 s, tanh hierarchy delta_tau 0.15 s, "
                    "5 epochs, seed 3; run folder results/y (config.json: every setting)")


@pytest.mark.slow
def test_smoke_run_writes_a_run_folder_and_refuses_a_second(root, tmp_path):
    args = ["--dataset_name", "mts_xor", "--n_epochs", "1", "--n_hid", "8", "--batch_size", "32",
            "--results_dir", str(tmp_path), "--save_dir_name", "smoke"]
    cache = tmp_path / "cache"
    result = run_main(root, *args, env={"HSNN_CACHE_DIR": str(cache)})
    assert any(cache.iterdir()), "the compiled programs were not cached"
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("training mts_xor: 3 hidden layers x 8 LIF, tau_mem 0.3 s, no hierarchy, 1 epoch, seed 0;")
    folder = str(tmp_path / "smoke")
    assert len(first) - len(folder) < 160 and folder in first and "test accuracy" in result.stdout
    # the output is no terminal here: one line per epoch, no progress-bar frames
    assert "epoch 1/1: loss" in result.stdout and "\r" not in result.stdout + result.stderr
    run = tmp_path / "smoke"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "metrics.json", "params.npz",
                                                     "provenance.json"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and len(metrics["epochs"]) == 1
    again = run_main(root, *args)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    # a second run of the same network reads every program back from the cache, the small
    # programs of the eager parameter initialisation included
    warm = run_main(root, *args[:-1], "smoke2", env={"HSNN_CACHE_DIR": str(cache), "JAX_LOG_COMPILES": "1"})
    assert warm.returncode == 0, warm.stderr
    compiled, hits = (warm.stderr.count(text) for text in ("Finished XLA compilation", "compilation cache hit"))
    assert compiled > 20 and hits == compiled, (compiled, hits)


@pytest.mark.slow
def test_compilation_cache_can_be_switched_off(root, tmp_path):
    cache = tmp_path / "cache"
    result = run_main(root, "--dataset_name", "mts_xor", "--n_epochs", "1", "--n_hid", "4", "--batch_size", "32",
                      "--results_dir", str(tmp_path), "--compilation_cache", "false",
                      env={"HSNN_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(root, tmp_path):
    common = ["--dataset_name", "mts_xor", "--n_epochs", "5", "--n_hid", "8", "--dropout", "0.1", "--batch_size", "32",
              "--results_dir", str(tmp_path), "--progress", "false"]
    straight = run_main(root, *common, "--save_dir_name", "straight")
    assert straight.returncode == 0, straight.stderr

    metrics_file = tmp_path / "killed" / "metrics.json"
    env, marker = pause_at_epoch(tmp_path / "hook", epoch=2)  # provably in flight: no race
    proc = subprocess.Popen([sys.executable, str(root / "main.py"), *common, "--save_dir_name", "killed"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    wait_for(marker, proc)
    deadline = time.time() + 120  # the checkpoint writer's thread finishes epoch 1's files meanwhile
    while time.time() < deadline and (not metrics_file.exists()
                                      or len(json.loads(metrics_file.read_text())["epochs"]) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(metrics_file.read_text())
    assert len(killed_at["epochs"]) == 2 and "test_acc" not in killed_at

    resumed = run_main(root, "--results_dir", str(tmp_path), "--save_dir_name", "killed", "--resume",
                       "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "killed"))
    for key in ("test_acc", "test_loss", "best_epoch", "best_valid_acc", "median_tau_per_layer"):
        assert a[key] == b[key], key
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        assert {k: v for k, v in ea.items() if k != "seconds"} == {k: v for k, v in eb.items() if k != "seconds"}


@pytest.mark.slow
def test_help_describes_every_field(root):
    """--help is generated from Config: each field's meaning, unit, paper symbol, choices and
    the default main.py gives it."""
    result = run_main(root, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for action in build_parser()._actions:
        assert action.option_strings[0] in text and action.help, action.option_strings
    assert "--tau_mem TAU_MEM centre of the hidden layers' membrane time constants [s]; paper: tau_mem (default: 0.1;" in text
    assert "one of: none, uniform, normal (default: uniform)" in text
    assert "--n_epochs N_EPOCHS training epochs [epochs] (default: 10)" in text


@pytest.mark.slow
def test_print_config_prints_the_resolved_configuration(root):
    result = run_main(root, "--dataset_name", "mts_xor", "--seed", "3", "--print_config")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config == parse("--dataset_name", "mts_xor", "--seed", "3").to_dict()
    assert config["dropout"] == 0.1 and config["n_layers"] == 4 and config["w_scale_n_hid"] == 128


def test_the_readme_commands_do_the_whole_set_up_and_ci_runs_the_test_command(root):
    """The README's two commands install what they need; .ci/run runs the second as written."""
    readme = (root / "README.md").read_text()
    block = readme.split("## The two commands", 1)[1].split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["pip install -r requirements.txt && python3 main.py --dataset_name mts_xor",
                        "pip install -r requirements.txt && python3 -m pytest"]
    assert commands[1] in (root / ".ci" / "run").read_text().splitlines()
    assert "pytest" in (root / "requirements.txt").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("env,says", [({"JAX_PLATFORMS": "cuda"}, "JAX_PLATFORMS"),
                                      ({"JAX_PLATFORMS": "cpux"}, "JAX_PLATFORMS"),
                                      ({"XLA_FLAGS": "--xla_no_such_flag=1"}, "XLA_FLAGS")])
def test_an_environment_jax_cannot_run_in_is_one_line_before_anything_is_written(root, tmp_path, env, says):
    """A platform that is not installed or misspelt, flags XLA does not know: one line, exit
    code 2, no run folder; the same command in a sound environment then trains."""
    args = ["--dataset_name", "mts_xor", "--n_epochs", "1", "--n_hid", "4", "--batch_size", "32",
            "--results_dir", str(tmp_path), "--save_dir_name", "run", "--progress", "false"]
    result = run_main(root, *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in result.stderr, \
        result.stderr
    assert not (tmp_path / "run").exists()
    clean = {k: v for k, v in os.environ.items() if k not in env}
    again = subprocess.run([sys.executable, str(root / "main.py"), *args], cwd=root, capture_output=True,
                           text=True, timeout=300, env={**clean, "JAX_PLATFORMS": "cpu"})
    assert again.returncode == 0, again.stderr
