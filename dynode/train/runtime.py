"""Where a training run runs: the device, the process group under torchrun, and the module that
``DistributedDataParallel`` wraps (see the package docstring, "Distributed")."""

from __future__ import annotations

import os

import torch
from torch import nn

from dynode.errors import ConfigurationError
from dynode.integrate import integrate
from dynode.threads import applied, use_threads


def init_distributed(device: str):
    """The ``torch.distributed`` module when a process group is (or, under torchrun, is now)
    initialised; None for a single process. Returns (dist, created). A DDP worker whose
    threads nothing set yet (the command line sets them first) takes the CPUs divided among
    the workers on its machine (:mod:`dynode.threads`; ``DYNODE_THREADS`` overrides it);
    local rank 0 prints the count."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        _worker_threads()
        return dist, False
    if world <= 1:
        return None, False
    if not dist.is_available():
        raise ConfigurationError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigurationError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun "
                                     "or call torch.distributed.init_process_group yourself")
    _worker_threads()
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist, True


def _worker_threads() -> None:
    """Apply the thread policy in a DDP worker unless this process already did."""
    if applied() is None:
        policy = use_threads()
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"{policy.describe()} per DDP worker", flush=True)


class Runner(nn.Module):
    """One forward pass = integrate the network over one time segment (DDP wraps this)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, stimulus, *, t0: float, t_end: float, dt: float, solver: str, save_at,
                initial_state, checkpoint):
        return integrate(self.network, stimulus, t0=t0, t_end=t_end, dt=dt, solver=solver,
                         save_at=save_at, initial_state=initial_state, checkpoint=checkpoint)


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device this machine has (``"cuda"``: the current CUDA device)."""
    dev = torch.device(name)  # a valid name: TrainingConfig checked it
    if dev.type == "meta":
        raise ConfigurationError("device 'meta' holds no values and cannot train; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {name!r}: this machine has no usable CUDA device "
                                     "(torch.cuda.is_available() is False); use device 'cpu'")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ConfigurationError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                                     f"device(s), numbered from 0")
        return torch.device("cuda", index)
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigurationError(f"device {name!r} is not available here ({str(exc).splitlines()[0]}); "
                                 "use 'cpu' or 'cuda'") from None
    return dev
