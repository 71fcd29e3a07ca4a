"""A seed ensemble in one checkpoint: the heads of several trained checkpoints over their shared trunk.

The recipes freeze the ImageNet trunk and train only the head (branches + NetVLAD), so checkpoints of
one recipe trained with different seeds hold the same trunk to the byte. Merged, they describe a frame
with one trunk pass and one head pass each, and the heads' VLADs are summed at one head's size
(`network.sum_heads`): the map keeps its size and format, and every runtime exports the whole graph.
On Gardens Point this is the only recipe change measured so far that beats the single seeds' mean by
more than one sd (docs/TRAINING.md, *Recipe trials*).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ..config import ConfigError, ModelConfig, model_config_from_json
from .checkpoint import CheckpointError, checkpoint_hash, model_from_state, read_checkpoint, save_checkpoint
from .network import head_sketch

MIN_MEMBERS = 2
TRUNK_PREFIX = "trunk."
HEAD_PREFIXES = ("branches.", "netvlad.")


def merge_checkpoints(members: Sequence[str | Path], out: str | Path) -> Path:
    """One checkpoint holding every member's head over the first member's trunk.

    Refuses members that are not one recipe's: another config, a trained or different trunk, a PCA
    stage, an uninitialised NetVLAD, an ensemble already, or the same checkpoint twice."""
    paths = [Path(m) for m in members]
    if len(paths) < MIN_MEMBERS:
        raise ValueError(f"an ensemble needs at least {MIN_MEMBERS} checkpoints, got {len(paths)}")
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"{out}: the output would overwrite one of the members")
    shas = [checkpoint_hash(p) for p in paths]
    twice = sorted({str(p) for p, s in zip(paths, shas) if shas.count(s) > 1})
    if twice:
        raise ValueError(f"the same checkpoint given more than once: {', '.join(twice)}")
    loaded = [read_checkpoint(p) for p in paths]
    first_meta, first_state = loaded[0]
    try:
        config = model_config_from_json(first_meta.get("config", ""))
    except ConfigError as exc:
        raise CheckpointError(f"{paths[0]}: invalid stored config: {exc}") from exc
    for path, (meta, state) in zip(paths, loaded):
        _check_member(path, meta, state, first_meta, first_state, paths[0])
    try:
        merged_config = config.replace(heads=len(paths))
    except ConfigError as exc:
        raise CheckpointError(f"{paths[0]}: cannot hold {len(paths)} heads: {exc}") from exc
    state = {k: v for k, v in first_state.items() if not k.startswith(HEAD_PREFIXES)}
    for k, (_, member) in enumerate(loaded):
        prefix = "" if k == 0 else f"extra_heads.{k - 1}."
        state.update({prefix + key: v for key, v in member.items() if key.startswith(HEAD_PREFIXES)})
    fresh = model_from_state(merged_config, {**_sketch_of(merged_config), **state}, "kmeans", str(out))
    # by content only: the same members merge to the same bytes from any folder, on any machine
    return save_checkpoint(fresh, out, {"ensemble_members": json.dumps([{"sha256": s} for s in shas])})


def ensemble_members(path: str | Path) -> list[dict[str, str]]:
    """The sha256 of each checkpoint an ensemble was merged from, head 0 first (empty for a one-head checkpoint)."""
    meta, _ = read_checkpoint(path)
    return json.loads(meta.get("ensemble_members", "[]"))


def _sketch_of(config: ModelConfig) -> dict[str, torch.Tensor]:
    perm, sign = head_sketch(config.heads, config.vlad_dim)
    return {"head_perm": perm, "head_sign": sign}


def _check_member(path: Path, meta: dict[str, str], state: dict[str, torch.Tensor], first_meta: dict[str, str],
                  first_state: dict[str, torch.Tensor], first: Path) -> None:
    config = json.loads(meta.get("config", "{}"))
    if config.get("heads", 1) != 1:
        raise CheckpointError(f"{path}: already an ensemble of {config['heads']} heads; merge its members instead")
    if meta.get("pca_dim", "0") != "0":
        raise CheckpointError(f"{path}: has a {meta['pca_dim']}-D PCA stage; an ensemble sums raw VLADs (pca_dim 0)")
    if meta.get("netvlad_init") != "kmeans":
        raise CheckpointError(f"{path}: NetVLAD never initialised from data (netvlad_init "
                              f"{meta.get('netvlad_init')!r}); not a trained member")
    if meta.get("config") != first_meta.get("config"):
        ours, theirs = json.loads(first_meta.get("config", "{}")), config
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise CheckpointError(f"{path}: its model config differs from {first}'s in {diff}; members must be one recipe")
    trunk = sorted(k for k in first_state if k.startswith(TRUNK_PREFIX))
    if sorted(k for k in state if k.startswith(TRUNK_PREFIX)) != trunk:
        raise CheckpointError(f"{path}: its trunk's tensors differ in name from {first}'s")
    changed = [k for k in trunk if not torch.equal(state[k], first_state[k])]
    if changed:
        raise CheckpointError(f"{path}: its trunk differs from {first}'s ({len(changed)} tensors, first {changed[0]}); "
                              "the heads share one trunk, so members must be trained with the trunk frozen from "
                              "the same backbone weights")
