"""The writer's lease: who writes an archive now, and whether that writer may still be alive.

While it writes, a run holds the root attribute ``writer = {pid, host, boot_id,
pid_start, token, started, heartbeat}`` (``heartbeat``: Unix time in s, by the writer's
clock), refreshed with every commit and at least every :data:`HEARTBEAT_S` seconds, and
removed when the run ends (complete, failed or interrupted). :func:`~dynode.archive.repair_archive` and
``simulate(overwrite=True)`` refuse an archive whose lease may be live
(:class:`~dynode.errors.ArchiveLockedError`, saying why); :func:`~dynode.archive.open_archive` reads it and
says in its warning who writes it. A lease is

* **dead** when its writer is provably gone: same host and a reboot since, no such process,
  a zombie, the pid now belongs to a process started later, or it is this process and none
  of its writers holds it. It is broken automatically, whatever its heartbeat says;
* **stale** when its heartbeat is older than :data:`LEASE_TIMEOUT_S` (a writer killed on
  another host, or suspended);
* **untrustworthy** when it is malformed (not an object with an int ``pid``, a host name
  and a ``heartbeat``; optional fields of the wrong type) or its heartbeat is not a finite,
  non-negative number or lies more than :data:`CLOCK_SKEW_S` in the future (the writer's
  clock disagrees with this one, so the lease's age cannot be measured). Such a lease never
  ages into staleness, so it counts as stale at once;
* live otherwise: refused, even with ``force=True``.

To clear a lease (after making sure no run writes the archive):
``dynode.archive.repair_archive(path, force=True)`` breaks a stale or untrustworthy lease,
cuts the arrays to the committed steps and consolidates the metadata; nothing else changes.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dynode.errors import ArchiveLockedError

LEASE_ATTR = "writer"  # root attribute holding the live writer's lease
HEARTBEAT_S = 30.0  # a live writer refreshes its lease at least this often (s)
LEASE_TIMEOUT_S = 300.0  # a lease whose heartbeat is older is stale: force=True may break it
CLOCK_SKEW_S = 60.0  # a heartbeat further in the future than this is not trusted (clock skew)


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of a process, from ``/proc`` (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


_HELD: set[str] = set()  # tokens of the leases that writers of this process hold now


def new_lease() -> dict:
    """A lease for this process: who writes, since when, and the first heartbeat. Its
    ``token`` is in ``_HELD`` until the writer releases it."""
    stat = proc_stat(os.getpid())
    now = time.time()
    lease = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
             "pid_start": None if stat is None else stat[1], "token": uuid.uuid4().hex,
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "heartbeat": now}
    _HELD.add(lease["token"])
    return lease


@dataclass(frozen=True)
class LeaseState:
    """A writer's lease as seen now (the rules are in the module docstring).

    ``pid`` / ``host``: the writer, None where the lease does not say (malformed); ``age``: s
    since its heartbeat, None when the heartbeat cannot be trusted; ``dead``: the writer is
    provably gone (same host, and a reboot since, no such process, a zombie, the pid now
    belongs to a process started later, or it is this process and none of its writers holds
    the lease any more); ``problem``: why the lease cannot be trusted (malformed, or a
    heartbeat that is not a time or lies in the future), None for a sound lease.
    """

    pid: int | None
    host: str | None
    age: float | None
    dead: bool
    problem: str | None = None

    @property
    def stale(self) -> bool:
        """Old (no heartbeat for :data:`LEASE_TIMEOUT_S`) or untrustworthy: ``force=True``
        breaks it."""
        return self.problem is not None or self.age > LEASE_TIMEOUT_S

    def describe(self) -> str:
        who = f"pid {self.pid} on host {self.host!r}" if self.pid is not None else "an unknown writer"
        if self.problem is not None:
            return f"{who} (its lease cannot be trusted: {self.problem})"
        return f"{who} (heartbeat {self.age:.0f} s ago)"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def lease_state(attrs: Mapping) -> LeaseState | None:
    """The lease in an archive's root ``attrs``, or None when no writer holds it. Never
    raises: a malformed lease comes back ``stale``, with its ``problem`` said."""
    lease = attrs.get(LEASE_ATTR)
    if lease is None:
        return None
    if not isinstance(lease, Mapping):
        return LeaseState(None, None, None, False, f"it is {_short(lease)}, not an object with pid, "
                                                   "host and heartbeat")
    missing = [k for k in ("pid", "host", "heartbeat") if k not in lease]
    pid, host, beat = lease.get("pid"), lease.get("host"), lease.get("heartbeat")
    if missing:
        return LeaseState(None, None, None, False, f"it lacks {', '.join(map(repr, missing))}")
    if not (_is_int(pid) and 0 < pid < 2 ** 31):
        return LeaseState(None, None, None, False, f"its pid {_short(pid)} is not a process id")
    if not (isinstance(host, str) and host):
        return LeaseState(None, None, None, False, f"its host {_short(host)} is not a host name")
    problem = None
    if not (isinstance(beat, (int, float)) and not isinstance(beat, bool)):
        problem = f"heartbeat {_short(beat)} is not a Unix time"
    elif not (math.isfinite(beat := _as_float(beat)) and beat >= 0):
        problem = f"heartbeat {beat!r} is not a Unix time"
    elif beat > time.time() + CLOCK_SKEW_S:
        problem = (f"heartbeat {beat - time.time():.0f} s in the future: the writer's clock and "
                   "this one disagree")
    for key, kinds in (("boot_id", str), ("pid_start", int), ("token", str)):
        value = lease.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            problem = problem or f"{key} {_short(value)} is not a {kinds.__name__}"
    dead = False
    if host == socket.gethostname() and pid == os.getpid():
        token = lease.get("token")
        dead = not isinstance(token, str) or token not in _HELD
    elif host == socket.gethostname():
        boot = lease.get("boot_id")
        if isinstance(boot, str) and boot_id() is not None and boot != boot_id():
            dead = True  # the machine rebooted since
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                dead = True
            except PermissionError:  # a process of another user: it exists
                dead = False
            stat = None if dead else proc_stat(pid)
            if stat is not None:
                start = lease.get("pid_start")
                dead = stat[0] == "Z" or (_is_int(start) and stat[1] != start)
    age = None if problem is not None else max(0.0, time.time() - beat)
    return LeaseState(pid, host, age, dead, problem)


def _as_float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:  # an int beyond any float
        return math.inf


def _short(value) -> str:
    """``repr(value)`` cut to 60 characters, and its type."""
    text = repr(value)
    return f"{text[:57] + '...' if len(text) > 60 else text} ({type(value).__name__})"


def _check_lease(path: Path, attrs: Mapping, *, doing: str, force: bool = False) -> None:
    """Raise :class:`ArchiveLockedError` if a writer may hold the archive. A provably dead
    writer's lease is ignored; ``force`` also ignores a stale or untrustworthy one."""
    st = lease_state(attrs)
    if st is None or st.dead or (force and st.stale):
        return
    if st.problem is not None:
        what = (f"its {LEASE_ATTR!r} attribute is malformed" if st.pid is None else
                f"the lease of pid {st.pid} on host {st.host!r} cannot be trusted")
        raise ArchiveLockedError(f"archive {str(path)!r}: {what} ({st.problem}); refusing to {doing} "
                                 "it: dynode cannot tell whether a run still writes it: make sure none "
                                 "does, then break the lease with "
                                 "dynode.archive.repair_archive(path, force=True)",
                                 pid=st.pid, host=st.host, heartbeat_age=st.age)
    if st.stale:
        hint = (f"its heartbeat is older than {LEASE_TIMEOUT_S:g} s, so that run may be gone "
                "(killed on another host, or suspended): if so, break the lease with "
                "dynode.archive.repair_archive(path, force=True)")
    else:
        hint = (f"wait for that run to end; if it is gone, its lease goes stale {LEASE_TIMEOUT_S:g} s "
                "after its last heartbeat and dynode.archive.repair_archive(path, force=True) "
                "then breaks it")
    raise ArchiveLockedError(f"archive {str(path)!r} is being written by {st.describe()}; refusing "
                             f"to {doing} it: {hint}", pid=st.pid, host=st.host, heartbeat_age=st.age)
