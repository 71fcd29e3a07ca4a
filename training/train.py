#!/usr/bin/env python3
"""Step 2: weakly supervised training from positions only, then PCA whitening.

    python training/train.py --config training/configs/gardens_point_small.yaml --run-dir runs/gp_small
    torchrun --nproc_per_node 4 training/train.py --config ... --run-dir ...   # DDP (NCCL / gloo on CPU)

Rerunning the same command resumes after the last finished epoch. `--set KEY=VALUE` overrides a key of the
config (`seed=2`: an ensemble config then trains heads of seeds 2M..2M+M-1), recorded in <run-dir>/overrides.txt. Outputs in <run-dir>:
model.safetensors (the trained checkpoint with PCA), best/last.safetensors, log.csv, curves.png,
config.yaml and command.txt.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from densernet_core.cli import run_cli, setup_logging, training_step_parser  # noqa: E402
from densernet_core.training.train_config import load_train_config  # noqa: E402
from densernet_core.training.trainer import run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = training_step_parser(__doc__)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(_run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.set)
    run_dir = Path(args.run_dir)
    if os.environ.get("RANK", "0") == "0":
        run_dir.mkdir(parents=True, exist_ok=True)
        saved, overrides = run_dir / "config.yaml", run_dir / "overrides.txt"
        given = "".join(f"{item}\n" for item in args.set)
        if saved.is_file() and (saved.read_text() != Path(args.config).read_text()
                                or (overrides.read_text() if overrides.is_file() else "") != given):
            raise ValueError(f"{run_dir} was started with a different config ({saved}, {overrides.name}); "
                             "use a new --run-dir")
        shutil.copyfile(args.config, saved)
        overrides.write_text(given)
        with open(run_dir / "command.txt", "a") as f:
            f.write(shlex.join([sys.executable, *sys.argv]) + "\n")
    print(run_training(cfg, run_dir, args.cache_dir, progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
