#!/usr/bin/env python3
"""Step 3: Recall@1/5/10/20 (and the recall curve) of a checkpoint on one or more protocols.

    python training/evaluate.py --checkpoint runs/gp_small/model.safetensors \
        --protocols training/configs/gardens_point_eval.yaml --out runs/gp_small/eval

A protocols file is a list of {name, database: [sources], queries: [sources], tolerance}
(tolerance in metres for GPS sets, frames for index-aligned traverses). Writes <out>.json and
<out>.png and prints a table. Deterministic: the same inputs give the same numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from densernet_core.model.checkpoint import load_model  # noqa: E402
from densernet_core.cli import run_cli, setup_logging  # noqa: E402
from densernet_core.config import ConfigError, load_yaml  # noqa: E402
from densernet_core.training.evaluation import evaluate_descriptors, format_table, save_results  # noqa: E402
from densernet_core.training.sources import load_database_and_queries  # noqa: E402
from densernet_core.training.train_config import eval_data_from  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--protocols", required=True, help="YAML with a 'protocols' list")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="override the stored resolution")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(_run, args)


def _run(args: argparse.Namespace) -> int:
    raw = load_yaml(args.protocols).get("protocols")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{args.protocols}: needs a non-empty 'protocols' list")
    protocols = [eval_data_from(p, f"protocols[{i}]") for i, p in enumerate(raw)]
    model = load_model(args.checkpoint, args.device, tuple(args.image_size) if args.image_size else None)
    results, described = [], {}
    for i, p in enumerate(protocols):
        db, q = load_database_and_queries(p.database, p.queries, p.name or f"protocols[{i}]")
        descs = []
        for split in (db, q):
            key = tuple(str(x) for x in split.data.images)
            if key not in described:  # a traverse used by several protocols is described once
                described[key] = model.describe(split.data.images, batch_size=args.batch_size, progress=True)
            descs.append(described[key])
        results.append(evaluate_descriptors(p.name or f"protocol {i}", descs[0], descs[1],
                                            db.data.positions, q.data.positions, p.tolerance))
    print(format_table(results))
    json_path, png_path = save_results(results, args.out, title=Path(args.checkpoint).name)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
