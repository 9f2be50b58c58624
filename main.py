"""Train one hierarchical SNN from the command line.

    python3 main.py --dataset_name mts_xor --n_layers 4 --hierarchy_tau tanh --delta_tau 0.4

Every `Config` field is a flag; flags not given take the task preset's value
(utils_initialization.PRESETS), then the Config default.
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from cli import OneLineParser, add_config_flags, parse_bool
from utils_initialization import Config, ConfigError, make_config

RUN_FLAGS = ("results_dir", "save_dir_name", "resume", "progress", "compilation_cache", "print_config")


def build_parser(prog="main.py") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, usage=f"{prog} [--dataset_name NAME] [--FIELD VALUE ...] [run options]",
                           description="Train a hierarchical spiking network. Flags not "
                           "given take the task preset's value (the published main.py's), else the default.",
                           allow_abbrev=False)
    add_config_flags(parser)
    parser.add_argument("--results_dir", default="results", help="parent folder of run folders")
    parser.add_argument("--save_dir_name", default=None,
                        help="run folder name (default: dataset, shape, seed and a timestamp)")
    parser.add_argument("--resume", type=parse_bool, nargs="?", const=True, default=False,
                        help="continue the run in --save_dir_name from its last finished epoch")
    parser.add_argument("--progress", type=parse_bool, default=True, help="show progress bars")
    parser.add_argument("--compilation_cache", type=parse_bool, default=True,
                        help="reuse compiled programs across runs (JAX's persistent cache)")
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved configuration as one JSON object and exit without training")
    return parser


def config_from_args(args) -> Config:
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_FLAGS and v is not None}
    if args.resume:
        stored = json.loads((Path(args.results_dir) / args.save_dir_name / "config.json").read_text())
        return Config(**{**stored, **overrides})
    return make_config(overrides.pop("dataset_name", "shd"), **overrides)


def default_run_name(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{cfg.dataset_name}_L{cfg.n_layers}x{cfg.n_hid}_{cfg.hierarchy_tau}_seed{cfg.seed}_{stamp}"


def fail(message, code):
    print(f"main.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resume and not args.save_dir_name:
        fail("--resume needs --save_dir_name, the run folder to continue", 2)
    if args.resume and not (Path(args.results_dir) / args.save_dir_name / "config.json").exists():
        fail(f"--resume: {Path(args.results_dir) / args.save_dir_name} holds no run to continue", 2)
    try:
        cfg = config_from_args(args)
    except (ConfigError, TypeError) as err:
        fail(err, 2)
    if args.print_config:
        print(json.dumps(cfg.to_dict()))
        return
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()), flush=True)
    run_dir = Path(args.results_dir) / (args.save_dir_name or default_run_name(cfg))

    from training import RunFolderError, TrainingDiverged, configure_jax, train_hsnn
    from utils_dataset import DataError
    configure_jax(args.compilation_cache)
    try:
        metrics = train_hsnn(cfg, run_dir, resume=args.resume, progress=args.progress)
    except RunFolderError as err:
        fail(err, 2)
    except (TrainingDiverged, DataError) as err:
        fail(err, 1)
    print(f"best validation accuracy {metrics['best_valid_acc']:.2%} (epoch {metrics['best_epoch'] + 1}), "
          f"test accuracy {metrics['test_acc']:.2%}; run folder {run_dir}")


if __name__ == "__main__":
    main()
