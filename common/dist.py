"""torch.distributed helpers: torchrun environment, ranks, DDP wrapping."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Initialise the default process group when launched by torchrun.

    gloo on CPU, nccl on CUDA. Returns True when running distributed."""
    if env_world_size() <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None and env_world_size() > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(wait: bool = False) -> None:
    """Destroy the process group; ``wait``: first wait for every rank (a run
    that ended well), so that no rank tears its connections down while another
    still uses them."""
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@torch.no_grad()
def replicas_identical(model: torch.nn.Module) -> bool:
    """True when every process holds bit-identical parameters."""
    if not is_distributed():
        return True
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
    # a cheap fingerprint: weighted sums are equal iff (almost surely) the weights are
    w = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97.0) + 1.0
    mine = torch.stack([flat.sum(), (flat * w).sum(), flat.abs().max()])
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)
