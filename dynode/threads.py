"""How many compute threads a dynode process gives torch, decided once at its start.

torch starts as many intra-op threads as the machine has cores. Two or three such processes on
one machine (a sweep's points, DDP workers, a test suite beside a demo) then run several times
more busy threads than there are cores, and each slows down far more than sharing the cores
fairly would explain (issue 26: a demo beside two other jobs on 2 cores took 13 minutes, 40 s
alone). So every dynode process takes the count it was given, the first of:

1. an explicit count: ``--threads N`` on the command line, or the ``threads`` Snakemake gives a
   sweep point (``python -m dynode.sweep point DIR --threads N``);
2. the environment: ``DYNODE_THREADS``, else ``OMP_NUM_THREADS`` (its first value; not in a
   DDP worker, where torchrun sets it to 1 on its own whenever it starts several processes);
3. the CPUs this process may run on: its affinity mask (``os.sched_getaffinity``: what
   ``taskset``, cgroups/Slurm or a container gave it), else ``os.cpu_count()``, divided among
   the DDP workers of this machine (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1.

:func:`use_threads` applies the count (``torch.set_num_threads``; the inter-op pool too where
torch still allows it, i.e. before any parallel work) and returns a :class:`ThreadPolicy` whose
:meth:`~ThreadPolicy.describe` is the line the commands print first, e.g. ``torch threads: 2
(affinity mask: 2 CPUs)``. Deciding imports nothing heavy (torch is imported by
:func:`use_threads` only), so a bad setting is refused before torch loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from dynode.errors import ConfigurationError

__all__ = ["ThreadPolicy", "decide_threads", "use_threads", "available_cpus", "applied", "thread_count"]

ENV = "DYNODE_THREADS"


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread count of this process and where it came from.

    ``threads``: torch's intra-op threads; ``source``: the setting that decided it (``--threads``,
    ``DYNODE_THREADS``, ``OMP_NUM_THREADS``, ``affinity mask``, ``cpu count``); ``cpus``: the
    CPUs this process may run on; ``workers``: the DDP workers on this machine sharing them;
    ``interop``: torch's inter-op threads once applied (None: not applied)."""

    threads: int
    source: str
    cpus: int
    workers: int = 1
    interop: int | None = None

    def describe(self) -> str:
        """One line for a command's output: the count, the setting, what it was divided from."""
        if self.source in ("affinity mask", "cpu count"):
            why = f"{self.source}: {self.cpus} CPU{'s' if self.cpus != 1 else ''}"
            if self.workers > 1:
                why += f" / {self.workers} local DDP workers"
        else:
            why = self.source
            if self.threads > self.cpus:
                why += f"; more than the {self.cpus} CPU{'s' if self.cpus != 1 else ''} this process may use"
        return f"torch threads: {self.threads} ({why})"


def available_cpus() -> tuple[int, str]:
    """The CPUs this process may run on and how that was found: the affinity mask where the
    platform has one (Linux), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)), "affinity mask"
    return os.cpu_count() or 1, "cpu count"


def thread_count(value, setting: str) -> int:
    """A thread count >= 1 from an option or an environment variable, or an error naming it."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigurationError(f"{setting}={value!r}: give a whole number of threads >= 1 "
                                 f"(or leave {setting} out to use the CPUs this process may run on)")
    return n


def decide_threads(explicit: int | None = None, *, setting: str = "--threads",
                   environ: Mapping[str, str] | None = None) -> ThreadPolicy:
    """The thread count for this process (the order is the module docstring's); ``explicit``
    is named ``setting`` in its error and in the description. Pure: reads ``environ``
    (default ``os.environ``) and the affinity mask, changes nothing."""
    env = os.environ if environ is None else environ
    cpus, found = available_cpus()
    workers = thread_count(env["LOCAL_WORLD_SIZE"], "LOCAL_WORLD_SIZE") if env.get("LOCAL_WORLD_SIZE") else 1
    if explicit is not None:
        return ThreadPolicy(thread_count(explicit, setting), setting, cpus, workers)
    if env.get(ENV, "").strip():
        return ThreadPolicy(thread_count(env[ENV], ENV), ENV, cpus, workers)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and workers == 1:
        return ThreadPolicy(thread_count(omp.split(",")[0], "OMP_NUM_THREADS"), "OMP_NUM_THREADS", cpus, workers)
    return ThreadPolicy(max(1, cpus // workers), found, cpus, workers)


_applied: ThreadPolicy | None = None


def applied() -> ThreadPolicy | None:
    """The policy :func:`use_threads` applied in this process, or None."""
    return _applied


def use_threads(explicit: int | None = None, *, setting: str = "--threads", once: bool = False) -> ThreadPolicy:
    """Decide (:func:`decide_threads`) and apply the thread count: ``torch.set_num_threads``,
    and ``torch.set_num_interop_threads`` on the first call if torch still allows it (it
    refuses once parallel work has started; the inter-op pool then keeps its size). With
    ``once``, a count applied earlier in this process (e.g. by the command line) is kept and
    returned instead."""
    global _applied
    if once and _applied is not None:
        return _applied
    policy = decide_threads(explicit, setting=setting)
    import torch  # here, not at the top: deciding (and refusing a bad setting) stays light

    torch.set_num_threads(policy.threads)
    if _applied is None and torch.get_num_interop_threads() != policy.threads:
        try:
            torch.set_num_interop_threads(policy.threads)
        except RuntimeError as exc:  # torch refuses once parallel work has started: the pool keeps its size
            if "interop" not in str(exc):
                raise
    _applied = replace(policy, interop=torch.get_num_interop_threads())
    return _applied
