"""Several processes (GPUs) training one model: DistributedDataParallel with a global contrastive batch.

Launch with ``torchrun --nproc_per_node N -m benchmark.cli run ...`` (or ``cleanbench run --gpus N``, which
launches that). Every rank runs the same grid in the same order; the training loop
(:func:`benchmark.training.train`) wraps the model in DDP and gives each rank its contiguous share of every
global batch, and the CLIP loss all-gathers the features (open_clip's ``ClipLoss`` with
``gather_with_grad=True``), so the logits are the global batch's B×B, as in a single process with the same
batch and as the CleanCLIP code does (reference §3: 128 global, 32 per GPU, embeddings all-gathered). Only
rank 0 writes files (results, checkpoints) and evaluates.

Losses that do not gather (a plugin's own, or cross-entropy) are per-rank means; DDP averages their gradients,
which equals the global mean because every rank gets the same number of examples.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from benchmark.errors import UserError

# open_clip's ClipLoss gathers with torch.distributed.nn.all_gather, which torch now marks deprecated on every
# call site; the call is correct and the warning is noise in every rank's log.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")


@dataclass(frozen=True)
class World:
    """This process's place among the processes training together (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process group's rank and size; a single process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that torchrun (or a Slurm job) describes in ``RANK``/``WORLD_SIZE``/``MASTER_*``;
    returns this rank's device (``cuda:LOCAL_RANK`` on GPUs). A no-op when ``WORLD_SIZE`` is absent or 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank with LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """The command that reruns ``cleanbench <argv>`` as ``processes`` ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "benchmark.cli", *argv]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (parameters broadcast from rank 0); unchanged in a single process."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of a global batch (every tensor split along its first dimension)."""
    here = world()
    if not here.distributed:
        return batch
    sizes = {len(value) for value in batch.values()}
    if any(size % here.size for size in sizes):
        raise UserError(f"a batch of {sorted(sizes)} examples cannot be split evenly over {here.size} processes; "
                        f"choose a batch size divisible by {here.size}")
    return {key: value.tensor_split(here.size)[here.rank] for key, value in batch.items()}


def shard_indices(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch's example indices (for batch makers that shard up front)."""
    here = world()
    if not here.distributed:
        return indices
    if len(indices) % here.size:
        raise UserError(f"a batch of {len(indices)} examples cannot be split evenly over {here.size} processes; "
                        f"choose a batch size divisible by {here.size}")
    return indices.tensor_split(here.size)[here.rank]


def clip_loss_options() -> dict[str, Any]:
    """Arguments for open_clip's ``ClipLoss`` that make its logits span the global batch across ranks."""
    here = world()
    if not here.distributed:
        return {}
    return {"local_loss": False, "gather_with_grad": True, "rank": here.rank, "world_size": here.size}


def gather_global(*features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each rank's features concatenated over ranks in rank order, with gradients flowing back to every rank
    (as open_clip's ``ClipLoss(gather_with_grad=True)``); the tensors themselves in a single process."""
    if not world().distributed:
        return features
    import torch.distributed.nn as dist_nn

    return tuple(torch.cat(dist_nn.all_gather(tensor)) for tensor in features)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks (so every rank logs, and stops on, the same loss)."""
    if not world().distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world().size


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if world().distributed:
        dist.barrier()
