"""Train one hierarchical SNN from the command line.

    python3 main.py --dataset_name mts_xor --n_layers 4 --hierarchy_tau tanh --delta_tau 0.4

Every `Config` field is a flag (`--help` lists them with units and defaults); flags not given
take the published main.py's value for the task (utils_initialization.PRESETS), then the
default. The run's folder is reserved before anything else happens; see run_folder.py.
"""

import argparse
import json
from datetime import datetime
from pathlib import Path

from cli import OneLineParser, add_config_flags, fail, parse_bool
from models import neuron_of
from run_folder import CONFIG, RunFolderError, check_name, check_results_dir
from runtime import BackendError, OutOfMemory, check_backend, configure_jax
from training import TrainingDiverged, train_hsnn
from utils_dataset import DataError
from utils_initialization import FIELDS, Config, ConfigError, make_config
from utils_io import FileError, read_json

EXAMPLES = """examples:
  python3 main.py --dataset_name mts_xor                    # the published main.py's MTS-XOR network, 10 epochs
  python3 main.py --dataset_name mts_xor --n_layers 4 --hierarchy_tau tanh --delta_tau 0.4 --n_epochs 60
  python3 main.py --dataset_name shd --convolution true     # the Table 1 hierarchical convolutional network
  python3 main.py --dataset_name mts_xor --neuron alif      # adaptive-threshold neurons
  python3 main.py --dataset_name mts_xor --print_config     # what a command trains, as JSON
  python3 main.py --results_dir results --save_dir_name RUN --resume   # continue a killed run
"""
RUN_FLAGS = ("results_dir", "save_dir_name", "resume", "restart", "force", "progress",
             "compilation_cache", "print_config")


def build_parser(prog="main.py") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, usage=f"{prog} [--dataset_name NAME] [--FIELD VALUE ...] [run options]",
                           description="Train a hierarchical spiking network. Flags not given take the "
                           "task preset's value (the published main.py's), else the default.",
                           epilog=EXAMPLES, allow_abbrev=False)
    add_config_flags(parser)
    run = parser.add_argument_group("run options")
    run.add_argument("--results_dir", default="results", help="parent folder of run folders")
    run.add_argument("--save_dir_name", default=None,
                     help="run folder name, inside --results_dir (default: dataset, shape, seed and a timestamp)")
    run.add_argument("--resume", type=parse_bool, nargs="?", const=True, default=False,
                     help="continue the run in --save_dir_name from its last finished epoch")
    run.add_argument("--restart", type=parse_bool, nargs="?", const=True, default=False,
                     help="train the run in --save_dir_name again from the start; its files are moved "
                          "into its previous-<time>/ folder, never deleted")
    run.add_argument("--force", type=parse_bool, nargs="?", const=True, default=False,
                     help="train even if the step's memory estimate exceeds the memory available")
    run.add_argument("--progress", type=parse_bool, default=True,
                     help="report the epochs: on a terminal a progress bar through each epoch and a line after "
                          "it, in a log file (output not a terminal) the lines only")
    run.add_argument("--compilation_cache", type=parse_bool, default=True,
                     help="reuse compiled programs across runs (JAX's persistent cache)")
    run.add_argument("--print_config", action="store_true",
                     help="print the resolved configuration as one JSON object and exit without training")
    return parser


def config_from_args(args) -> Config:
    """The flags' configuration; with --resume (or --restart of a readable run) the run
    folder's config.json, with the flags given on top."""
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_FLAGS and v is not None}
    stored = Path(args.results_dir) / (args.save_dir_name or "") / CONFIG
    if args.resume or (args.restart and stored.exists()):
        fix = "add --restart and the run's flags to train it from the start"
        try:
            values = read_json(stored, "run configuration", fix)
            if not isinstance(values, dict) or set(values) - set(FIELDS):
                raise FileError(f"{stored}: not a run configuration (a JSON object of Config fields); {fix}")
            try:
                Config(**values)
            except ConfigError as err:
                raise FileError(f"{stored}: not a valid run configuration ({err}); {fix}") from None
            return Config(**{**values, **overrides})
        except FileError:
            if args.resume:
                raise
    return make_config(overrides.pop("dataset_name", "shd"), **overrides)


def plural(n: int, noun: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def summary_line(cfg: Config, run_dir: Path) -> str:
    """What a run trains, in one short line; config.json in its folder holds every setting."""
    hierarchy = ("no hierarchy" if cfg.hierarchy_tau == "none" else
                 f"{cfg.hierarchy_tau} hierarchy delta_tau {cfg.delta_tau:g} s")
    network = f"{plural(cfg.n_hidden_layers, 'hidden layer')} x {cfg.n_hid} {cfg.neuron.upper()}"
    network += (" recurrent" if cfg.recurrent else "") + (" convolutional" if cfg.convolution else "")
    return (f"training {cfg.dataset_name}: {network}, tau_mem {cfg.tau_mem:g} s, {hierarchy}, "
            f"{plural(cfg.n_epochs, 'epoch')}, seed {cfg.seed}; run folder {run_dir} (config.json: every setting)")


def default_run_name(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{cfg.dataset_name}_L{cfg.n_layers}x{cfg.n_hid}_{cfg.hierarchy_tau}_seed{cfg.seed}_{stamp}"


def check_run_flags(args):
    try:
        check_results_dir(args.results_dir)
        if args.save_dir_name is not None:
            check_name(args.save_dir_name)
    except RunFolderError as err:
        fail("main.py", err, 2)
    if (args.resume or args.restart) and not args.save_dir_name:
        fail("main.py", f"--{'resume' if args.resume else 'restart'} needs --save_dir_name, the run folder", 2)
    if args.resume and args.restart:
        fail("main.py", "--resume and --restart exclude each other: continue the run, or train it again", 2)
    if args.resume and not (Path(args.results_dir) / args.save_dir_name / CONFIG).exists():
        fail("main.py", f"--resume: {Path(args.results_dir) / args.save_dir_name} holds no run to continue", 2)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_run_flags(args)
    run_dir = None
    try:
        cfg = config_from_args(args)
        neuron_of(cfg)  # an unknown neuron model or setting: one line, before anything is written
        if args.print_config:
            return print(json.dumps(cfg.to_dict()))
        run_dir = Path(args.results_dir) / (args.save_dir_name or default_run_name(cfg))
        print(summary_line(cfg, run_dir), flush=True)
        configure_jax(args.compilation_cache, cfgs=[cfg])
        check_backend()  # before the run folder is made
        metrics = train_hsnn(cfg, run_dir, resume=args.resume, progress=args.progress,
                             restart=args.restart, force=args.force)
    except (ConfigError, RunFolderError, FileError, OutOfMemory, BackendError) as err:
        fail("main.py", err, 2)
    except (TrainingDiverged, DataError) as err:
        fail("main.py", err, 1)
    except KeyboardInterrupt:
        if run_dir is None:
            fail("main.py", "interrupted", 130)
        fail("main.py", f"interrupted; continue this run with: python3 main.py --results_dir {args.results_dir} "
             f"--save_dir_name {run_dir.relative_to(args.results_dir)} --resume", 130)
    print(f"best validation accuracy {metrics['best_valid_acc']:.2%} (epoch {metrics['best_epoch'] + 1}), "
          f"test accuracy {metrics['test_acc']:.2%}; run folder {run_dir}")


if __name__ == "__main__":
    main()
