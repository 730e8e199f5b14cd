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
   the DDP workers of this machine (``LOCAL_WORLD_SIZE``, set by torchrun), at least 1. A
   process that got its count this way (told nothing, not a DDP worker) shares them with the
   other busy processes while it runs (:func:`share`, below): it gives up the CPUs they keep
   busy and takes them back once they are idle, saying so on stderr.

:func:`use_threads` applies the count (``torch.set_num_threads``; the inter-op pool too where
torch still allows it, i.e. before any parallel work) and returns a :class:`ThreadPolicy` whose
:meth:`~ThreadPolicy.describe` is the line the commands print first, e.g. ``torch threads: 2
(affinity mask: 2 CPUs)``. Deciding imports nothing heavy (torch is imported by
:func:`use_threads` only), so a bad setting is refused before torch loads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from dynode.errors import ConfigurationError

__all__ = ["ThreadPolicy", "decide_threads", "use_threads", "available_cpus", "applied", "thread_count", "share"]

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
    global _sharing
    _sharing = (_Sharing(_applied.threads) if _applied.source in ("affinity mask", "cpu count")
                and _applied.workers == 1 and os.path.exists(_PROC_STAT) else None)
    return _applied


# -- sharing the CPUs with other busy processes -------------------------------------------------
# A process told nothing takes every CPU it may run on. Where other processes keep some of them
# busy (two demos started together, a test suite beside a training run), that is more busy
# threads than CPUs, and torch's OpenMP threads, which spin while they wait for each other,
# then lose far more than a fair share: two `dynode demo --quick` at once on the 2-core VM took
# 2.7x one demo's time. So such a process looks, at most every SHARE_EVERY_S seconds and from
# the thread that computes (each integrate call), at how many CPUs the other processes used
# since the last look (busy CPU time of the machine, /proc/stat, minus this process's own), and
# takes the rest: max(1, CPUs - round(others)), back up to every CPU once they are idle.
# Each change is said on stderr. A count that was given (--threads, Snakemake's threads,
# DYNODE_THREADS, OMP_NUM_THREADS) or divided among DDP workers is never changed.
SHARE_EVERY_S = 2.0
_PROC_STAT = "/proc/stat"


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq,
    softirq; not idle, iowait or time stolen by a hypervisor)."""
    with open(_PROC_STAT) as f:
        fields = f.readline().split()
    ticks = sum(int(fields[i]) for i in (1, 2, 3, 6, 7))
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    """CPU seconds this process (all its threads) has spent."""
    t = os.times()
    return t.user + t.system


class _Sharing:
    """The running look at the other processes (see above), for a process told nothing."""

    def __init__(self, cpus: int):
        self.cpus, self.now = cpus, time.monotonic
        t = self.now()
        self.next = t + SHARE_EVERY_S
        self.last = (t, _machine_busy_s(), _own_busy_s())

    def look(self) -> None:
        t = self.now()
        if t < self.next:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # torch's thread count is set from the thread that computes
        self.next = t + SHARE_EVERY_S
        busy, own = _machine_busy_s(), _own_busy_s()
        t0, busy0, own0 = self.last
        self.last = (t, busy, own)
        others = max(0.0, ((busy - busy0) - (own - own0)) / max(t - t0, 1e-9))
        want = max(1, self.cpus - round(others))
        global _applied
        if want != _applied.threads:  # _applied: set by use_threads, which made this look
            import torch

            torch.set_num_threads(want)
            print(f"dynode: torch threads {_applied.threads} -> {want}: other processes kept {others:.1f} of "
                  f"this process's {self.cpus} CPUs busy", file=sys.stderr, flush=True)
            _applied = replace(_applied, threads=want)


_sharing: _Sharing | None = None


def share() -> None:
    """Called by :func:`dynode.integrate`: a process told nothing gives up the CPUs that other
    processes keep busy, and takes them back (see above). Nothing otherwise (one global check)."""
    if _sharing is not None:
        _sharing.look()
