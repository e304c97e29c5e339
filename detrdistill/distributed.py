"""Collectives over training processes, for losses and the loop; no-ops in one process.

Only torch.distributed, so the loss modules can import it cheaply. The process group itself
is set up by Hugging Face Accelerate (``training/accelerator.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of training processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True in a single process and in the process of global rank 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _all_reduce(value: torch.Tensor, op) -> torch.Tensor:
    """A reduced float copy of ``value``, on ``value``'s device (NCCL reduces on the GPU)."""
    result = value.detach().float().clone()
    if world_size() == 1:
        return result
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else result.device
    on_device = result.to(device)
    dist.all_reduce(on_device, op=op)
    return on_device.to(result.device)


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over processes (detached float); a copy of it in one process."""
    return _all_reduce(value, dist.ReduceOp.SUM)


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over processes (detached float): DETR's ``num_boxes`` normaliser.

    A loss that is a sum over items divided by ``mean_over_processes(local item count)``,
    then averaged over processes by DDP, equals the sum over all items divided by their
    total count: the one-process loss on the global batch. Every process must call it.
    """
    return sum_over_processes(value) / world_size()


def max_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over processes (detached float), e.g. to agree on stopping."""
    return _all_reduce(value, dist.ReduceOp.MAX)


def end_processes() -> None:
    """Close the process group (when there is one) once a launched run is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
