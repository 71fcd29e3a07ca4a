#!/usr/bin/env python3
"""Step 1: initialise NetVLAD from k-means over dense descriptors of the training images.

    python training/cluster.py --config training/configs/gardens_point_small.yaml --run-dir runs/gp_small

Writes <run-dir>/init.safetensors (skipped when present); `train.py` runs this step itself when needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from densernet_core.cli import run_cli, setup_logging, training_step_parser  # noqa: E402
from densernet_core.training.train_config import load_train_config  # noqa: E402
from densernet_core.training.trainer import Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = training_step_parser(__doc__).parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(_run, args)


def _run(args: argparse.Namespace) -> int:
    print(Trainer(load_train_config(args.config, args.set), args.run_dir, args.cache_dir).cluster())
    return 0


if __name__ == "__main__":
    sys.exit(main())
