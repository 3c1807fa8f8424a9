"""Process-group set-up for ``torchrun`` (gloo on CPU, nccl on CUDA) and small collective helpers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_main", "world_size", "rank", "all_reduce_sum", "all_reduce_max", "barrier",
           "pick_device"]


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (even of one process); True if distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    # torchrun sets both, also for one process: DDP with one process exercises the same paths (nccl on CUDA)
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        # nccl reduces CUDA tensors only; the engine's tallies live on the CPU
        on_device = tensor.to(pick_device())
        dist.all_reduce(on_device, op=op)
        tensor.copy_(on_device)
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op outside a process group); returns it."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``tensor`` over ranks in place (a no-op outside a process group)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def pick_device() -> torch.device:
    """This process's device: its local CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
