"""Data parallelism: one process per GPU (or per CPU share, gloo), started by torchrun.

`init(device)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
joins the process group (also for a world of one, so that one GPU runs the DDP path); without
that environment the run is one plain process, as before. Every rank builds the same model from the same
seed (DDP checks it and broadcasts rank 0's weights anyway), draws the same global batch from the
same seeded sampler, and trains on its own contiguous shard of it (`shard`); DDP averages the
gradients, so a step equals the single-process step on the whole global batch up to the order of
floating-point additions. Only rank 0 writes the log, the checkpoint and the summary.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .data import TrainError

NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None         # set when this process joined a process group (torchrun)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def record(self, batch_size: int, micro_batch: int) -> dict:
        local = batch_size // self.world
        return {"world_size": self.world, "backend": self.backend, "sequences_per_rank": local,
                "micro_batch": micro_batch, "accumulation_steps": local // micro_batch,
                "launcher": "torchrun" if self.enabled else None}


def launched() -> bool:
    """True inside a process that torchrun started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_name: str):
    """(Dist, torch.device) of this process; joins the process group when torchrun started it."""
    import torch

    if not launched():
        return Dist(), pick_device(device_name)
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name not in ("auto", "cpu", "cuda"):
        raise TrainError(f"--device {device_name}: a data-parallel run picks one device per process "
                         f"(use auto, cuda or cpu)")
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not cuda:
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise TrainError(f"rank {rank}: local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, **({"device_id": device} if cuda else {}))
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend), device


def close(ctx: Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise TrainError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def check_batch(batch_size: int, world: int, micro_batch: int | None) -> int:
    """The micro-batch (sequences per forward pass per process) after checking that the global
    batch splits evenly over the processes and the shard over micro-batches."""
    if batch_size % world:
        raise TrainError(f"batch size {batch_size} does not split over {world} processes; "
                         f"pick a multiple of {world} (--batch-size)")
    local = batch_size // world
    micro = min(micro_batch or local, local)
    if local % micro:
        raise TrainError(f"{local} sequences per process do not split into micro-batches of {micro} (--micro-batch)")
    return micro


def shard(ctx: Dist, batch_size: int) -> slice:
    """This rank's contiguous share of the global batch's rows."""
    local = batch_size // ctx.world
    return slice(ctx.rank * local, (ctx.rank + 1) * local)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def mean_across(ctx: Dist, tensor):
    """The mean of `tensor` over the ranks (the tensor itself in one process)."""
    if not ctx.enabled:
        return tensor
    import torch.distributed as dist

    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / ctx.world


def wrap(ctx: Dist, module, device):
    """DistributedDataParallel around `module` when this is a data-parallel run."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
               broadcast_buffers=False, gradient_as_bucket_view=True)


def torchrun_argv(nproc: int, module_argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m MODULE ARGS` for
    module_argv = [python, "-m", MODULE, *ARGS] (standalone: a rendezvous of its own on a free
    local port, so two of them can run side by side)."""
    if module_argv[1:2] != ["-m"]:
        raise ValueError(f"expected [python, '-m', module, ...], got {module_argv[:3]}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", *module_argv[2:]]
