"""Multi-GPU / multi-node training through `torchrun` (PyTorch DDP). Without torchrun every helper is a no-op.

`torchrun --nproc_per_node=N -m detector.cli train -c CONFIG` runs the same command on N processes:
each rank reads its shard of every epoch (see engine.EpochSampler), gradients are all-reduced by DDP,
and only rank 0 logs and writes checkpoints. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """`train.device`: auto (this rank's GPU when CUDA is available, else CPU), cpu, cuda or cuda:N."""
    from detector.structures import DetectorError

    if name == "auto":
        return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"train.device is '{name}' but CUDA is not available on this machine")
    return torch.device(name)


def init_from_env() -> None:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    torch_dist.init_process_group(backend=backend, timeout=timedelta(minutes=collective_timeout_min()))


def collective_timeout_min() -> float:
    """How long a rank waits in a collective (DETECTOR_DDP_TIMEOUT_MIN, default 60 minutes): validation runs on
    rank 0 while the others wait at a barrier, so it must outlast one validation. Failures do not wait for it:
    ranks agree on a data error or a non-finite loss at every step (`any_rank`) and stop together."""
    return float(os.environ.get("DETECTOR_DDP_TIMEOUT_MIN", 60))


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def _collective_device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo takes CPU tensors
    return torch.device("cuda", local_rank()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (e.g. a signal that reached one process)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_float(value: float) -> float:
    """Rank 0's value on every rank."""
    if not is_distributed():
        return value
    holder = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    torch_dist.broadcast(holder, src=0)
    return float(holder.item())


def broadcast_path(path: Path) -> Path:
    """Rank 0's run folder, on every rank."""
    if not is_distributed():
        return path
    holder = [str(path)]
    torch_dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of all parameters, to check that the ranks hold identical weights."""
    digest = hashlib.sha1()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_weights_in_sync(model: nn.Module, run_dir: Path) -> None:
    """Gather every rank's weight digest; rank 0 writes them to ddp_ranks.json. DDP keeps ranks
    identical, so a difference here means a bug (e.g. a rank that skipped a step)."""
    if not is_distributed():
        return
    digests: list[str | None] = [None] * world_size()
    torch_dist.all_gather_object(digests, weights_digest(model))
    if is_main():
        (Path(run_dir) / "ddp_ranks.json").write_text(json.dumps({"world_size": world_size(), "digests": digests}))
    barrier()
