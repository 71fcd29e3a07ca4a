"""torchrun integration: one code path whether one CPU process or many GPUs across nodes.

Training (data-parallel replicas) and map building (images sharded across ranks, merged on rank 0)
both join the group torchrun describes. CPU tensors always travel over gloo, CUDA tensors over NCCL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .model.network import resolve_device

# How long a rank waits for another (a collective, or rank 0 receiving a shard's results): long enough
# for the slowest rank of a map build to finish its share, short enough that a dead peer is noticed.
GROUP_TIMEOUT = timedelta(hours=2)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: object) -> list[object]:
        if not self.enabled:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: object) -> object:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def send_array(self, array: np.ndarray, dst: int = 0) -> None:
        """A numpy array to another rank (the receiver knows its shape and dtype)."""
        dist.send(torch.from_numpy(np.ascontiguousarray(array)), dst=dst)

    def recv_array(self, shape: tuple[int, ...], dtype: np.dtype, src: int) -> np.ndarray:
        buf = torch.from_numpy(np.empty(shape, dtype=dtype))
        dist.recv(buf, src=src)
        return buf.numpy()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # Both backends on GPUs: NCCL for the model's CUDA tensors, gloo for the CPU arrays of map shards.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo",
                                timeout=GROUP_TIMEOUT)
    return DistContext(rank, world, local, dev)
