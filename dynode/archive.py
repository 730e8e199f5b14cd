"""Trajectory archives: the xarray/zarr layout, streamed writing, reading and export.

Layout (a ``xarray.DataTree``; on disk a zarr v3 store, one zarr group per node)::

    /                      root: coords time (ms), sample (+ condition coords on sample)
        stimulus           (time, sample, input): mean of each stimulus input over its units
        attrs              dynode_archive, status, run_id, created, config (JSON), solver,
                           dt, t0, t_end, solver_stats (JSON), steps_written, *_version
    /<population>          one group per recorded population
        rate               (time, sample, channel, y, x) -- fewer dims for vector populations,
                           (time, sample) after reduce="mean"/"std",
                           (time, sample, statistic) after reduce="mean_std"
        coords             time, sample, condition coords, channel, y, x (kept unit indices)

Every variable carries CF-style ``units`` / ``long_name`` attributes; time is float ms.

Streaming protocol (crash safety): the store is created when the first state arrives, with
the whole time axis allocated (every recording time is known before the run) and written
into the ``time`` coordinates, status ``incomplete`` and ``steps_written = 0``. It is built
under a hidden sibling name (``.<name>.dynode-new-<hex>``) and renamed into place, so the
store either does not exist or opens. Each block of ``chunk_steps`` steps then writes whole
new chunks of the data arrays (zarr's local store writes every file atomically) and commits
``steps_written``. Array shapes never change while the run goes, so a killed run leaves a
store that plain ``xarray.open_datatree(path, engine="zarr")`` opens, with every committed
block; the steps after ``steps_written`` read as NaN (the fill value), and
:func:`open_archive` cuts them off. A run that ends with an exception or Ctrl-C writes what
it computed, cuts the arrays to it and sets ``status = "failed: <reason>"``. Metadata is
consolidated once, when the run ends.

Lease: while it writes, the run holds the root attribute ``writer = {pid, host, boot_id,
pid_start, token, started, heartbeat}`` (``heartbeat``: Unix time in s, by the writer's
clock), refreshed with every commit and at least every :data:`HEARTBEAT_S` seconds, and
removed when the run ends (complete, failed or interrupted). :func:`repair_archive` and
``simulate(overwrite=True)`` refuse an archive whose lease may be live
(:class:`~dynode.errors.ArchiveLockedError`, saying why); :func:`open_archive` reads it and
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

Integrity: every array carries a crc32c checksum codec (a corrupted chunk raises on read).
:func:`open_archive` checks the store against what its root attributes declare (a group
for every population in ``populations`` with the arrays it must hold, no undeclared group,
the stimulus and condition arrays of the ``config``) and that every chunk of the committed
steps exists; :func:`verify_archive` also reads and checksums them all. A lazy read of a
tree from :func:`open_archive` that hits a damaged chunk raises
:class:`~dynode.errors.ArchiveCorruptError` naming the population, variable and steps.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends.common import BackendArray

from dynode.errors import (ArchiveCorruptError, ArchiveError, ArchiveLockedError,
                           ConfigurationError, DynodeError)

__all__ = [
    "ARCHIVE_FORMAT", "IncompleteArchiveWarning", "Layout", "GroupSpec", "Block",
    "ZarrArchiveWriter", "MemoryArchiveWriter", "open_archive", "archive_config", "repair_archive",
    "verify_archive", "VerifyReport", "Damage", "LeaseState", "lease_state", "HEARTBEAT_S",
    "LEASE_TIMEOUT_S", "CLOCK_SKEW_S",
    "select_conditions", "time_window", "population_time_course", "population_time_courses", "to_brainscore",
]

ARCHIVE_FORMAT = 1  # root attribute ``dynode_archive``: version of this layout
TIME_ATTRS = {"units": "ms", "long_name": "time", "standard_name": "time"}
SAMPLE_ATTRS = {"units": "1", "long_name": "sample index in the batch"}
RATE_UNITS = "a.u."
"""Units of a rate (model rates are dimensionless; "a.u." reads well on a plot axis)."""
CONDITION_ATTRS = {
    "contrast": {"units": "1", "long_name": "stimulus contrast (fraction of full contrast)"},
    "duration": {"units": "ms", "long_name": "stimulus duration"},
    "isi": {"units": "ms", "long_name": "inter-stimulus interval"},
    "onset": {"units": "ms", "long_name": "stimulus onset"},
    "n_pulses": {"units": "1", "long_name": "number of stimulus pulses"},
    "image": {"units": "1", "long_name": "image index"},
}
"""CF attributes of the stimulus conditions dynode's protocols label (any other condition gets
a ``long_name`` only: its units are the stimulus's to say)."""
RESERVED = frozenset({"time", "sample", "rate", "stimulus", "input", "statistic", "channel", "x",
                      "y", "z", "feature"})
COMPRESSIONS = ("lz4", "zstd", None)
LEASE_ATTR = "writer"  # root attribute holding the live writer's lease
HEARTBEAT_S = 30.0  # a live writer refreshes its lease at least this often (s)
LEASE_TIMEOUT_S = 300.0  # a lease whose heartbeat is older is stale: force=True may break it
CLOCK_SKEW_S = 60.0  # a heartbeat further in the future than this is not trusted (clock skew)


class IncompleteArchiveWarning(UserWarning):
    """The archive's run did not complete (status ``incomplete`` or ``failed: ...``)."""


# -- layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """One population's group: the stored per-sample ``dims``, their ``coords``, ``rate`` attrs."""

    name: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    attrs: dict
    dtype: np.dtype


@dataclass(frozen=True)
class Layout:
    """Everything that does not change along time: sample labels, groups, inputs, root attrs."""

    batch: int
    conditions: dict[str, np.ndarray]
    groups: tuple[GroupSpec, ...]
    inputs: tuple[str, ...]
    stimulus_dtype: np.dtype
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """``times`` (k,) float64 ms; ``rates`` {population: (k, batch, *dims)}; ``stimulus``
    (k, batch, n_inputs) or None."""

    times: np.ndarray
    rates: dict[str, np.ndarray]
    stimulus: np.ndarray | None

    def __len__(self) -> int:
        return len(self.times)


def condition_coords(conditions: Mapping[str, Sequence], batch: int) -> dict[str, np.ndarray]:
    """Validate stimulus condition labels: one value per sample, numbers, bools or strings."""
    out = {}
    for name, values in (conditions or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
            raise ConfigurationError(f"stimulus condition {name!r}: condition names must be identifiers "
                                     f"other than {sorted(RESERVED)}")
        arr = np.asarray(values.tolist() if hasattr(values, "tolist") else list(values))
        if arr.ndim != 1 or len(arr) != batch:
            raise ConfigurationError(f"stimulus condition {name!r} has {arr.shape} values; give one "
                                     f"value per sample (batch {batch})")
        if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr)):
            arr = np.array([str(v) for v in arr], dtype=object)  # stored as zarr variable-length utf8
        elif arr.dtype.kind not in "biuf":
            raise ConfigurationError(f"stimulus condition {name!r}: values must be numbers, bools or "
                                     f"strings (one type), got dtype {arr.dtype}")
        out[name] = arr
    return out


def _sample_coords(layout: Layout) -> dict:
    coords = {"sample": ("sample", np.arange(layout.batch, dtype=np.int64), SAMPLE_ATTRS)}
    for name, values in layout.conditions.items():
        coords[name] = ("sample", values, CONDITION_ATTRS.get(name, {"long_name": f"stimulus condition: {name}"}))
    return coords


def block_datasets(layout: Layout, block: Block) -> dict[str, xr.Dataset]:
    """The block as one Dataset per group (``"/"`` and one per population)."""
    base = {"time": ("time", np.asarray(block.times, dtype=np.float64), TIME_ATTRS),
            **_sample_coords(layout)}
    root_vars = {}
    root_coords = dict(base)
    if layout.inputs:
        root_coords["input"] = ("input", np.array(list(layout.inputs), dtype=object),
                                {"long_name": "stimulus input"})
        root_vars["stimulus"] = (("time", "sample", "input"), block.stimulus,
                                 {"units": RATE_UNITS, "long_name": "stimulus intensity, mean over its units"})
    out = {"/": xr.Dataset(root_vars, coords=root_coords, attrs=layout.attrs)}
    for g in layout.groups:
        coords = dict(base)
        for d, v in g.coords.items():
            coords[d] = (d, v, {"units": "1", "long_name": _DIM_NAMES.get(d, d)})
        out[g.name] = xr.Dataset({"rate": (("time", "sample") + g.dims, block.rates[g.name], g.attrs)},
                                 coords=coords)
    return out


_DIM_NAMES = {"channel": "channel index", "x": "x position (column index)",
              "y": "y position (row index)", "z": "z position", "statistic": "statistic over units",
              "feature": "reduced feature index"}


def _codecs(compression) -> list:
    """The bytes-to-bytes codecs of a data array: the compressor, then a crc32c checksum
    (checked first on every read, so a corrupted chunk raises instead of decoding garbage)."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"), Crc32cCodec()]
    if compression == "zstd":
        return [ZstdCodec(level=3), Crc32cCodec()]
    return [Crc32cCodec()]


def _zarr_config():
    import zarr

    # skip zarr's per-chunk "is everything the fill value?" scan: it costs more than the write
    return zarr.config.set({"array.write_empty_chunks": True})


def _shrink(arr, n: int) -> None:
    """Set the time length of a zarr array to ``n`` by a metadata write only (no scan over
    the chunk keys past ``n``, which could be many; data there is ignored by readers)."""
    from zarr.core.sync import sync

    sync(arr.async_array.resize((n,) + arr.shape[1:], delete_outside_chunks=False))


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(str(path))


# -- the writer's lease ---------------------------------------------------------------------
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
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
    stat = _proc_stat(os.getpid())
    now = time.time()
    lease = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
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
        if isinstance(boot, str) and _boot_id() is not None and boot != _boot_id():
            dead = True  # the machine rebooted since
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                dead = True
            except PermissionError:
                pass  # a process of another user
            stat = None if dead else _proc_stat(pid)
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


# -- writers --------------------------------------------------------------------------------
def check_writable(folder: Path, what: str, *, also: tuple[Path, ...] = ()) -> None:
    """Before any work: the nearest existing folder at or above ``folder`` (and each of ``also``)
    is a folder in which files can be created; else a :class:`ConfigurationError` naming
    ``what`` (e.g. ``"store '/runs/a.zarr'"``)."""
    anc = folder
    while not (anc.exists() or anc.is_symlink()) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigurationError(f"{what}: {str(anc)!r} is a file, not a folder; choose another folder")
    for f in (anc, *also):
        try:
            fd, probe = tempfile.mkstemp(prefix=".dynode-probe-", dir=f)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigurationError(f"{what}: cannot create files in the folder {str(f)!r} "
                                     f"({exc.strerror}); choose a writable folder") from None


def prepare_path(path, overwrite: bool) -> Path:
    """Check a store path before any work: refuse an existing path unless ``overwrite``, and
    even then refuse anything that is not a dynode archive (a file, a link, a foreign folder
    or zarr store) or an archive that a live run is writing; the folder must be writable."""
    if not isinstance(path, (str, Path)):
        raise ConfigurationError(f"store must be a path (str or pathlib.Path) to a zarr directory, got "
                                 f"{type(path).__name__}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ConfigurationError(f"store {str(path)!r} already exists; pass overwrite=True to "
                                     "replace it, or choose another path")
        if path.is_symlink():
            raise ConfigurationError(f"store {str(path)!r} is a symbolic link; refusing to replace it "
                                     "even with overwrite=True: remove the link or choose another path")
        if not path.is_dir():
            raise ConfigurationError(f"store {str(path)!r} is a file, not a dynode archive; refusing to "
                                     "delete it even with overwrite=True")
        if any(path.iterdir()):
            if not (path / "zarr.json").is_file():
                raise ConfigurationError(f"store {str(path)!r} is a non-empty directory that is not a "
                                         "zarr store; refusing to delete it even with overwrite=True")
            attrs = _root_meta(path).get("attributes", {})
            if "dynode_archive" not in attrs:
                raise ConfigurationError(f"store {str(path)!r} is a zarr store that dynode did not write "
                                         "(no 'dynode_archive' attribute); refusing to delete it even "
                                         "with overwrite=True")
            _check_lease(path, attrs, doing="overwrite")
    check_writable(path.parent, f"store {str(path)!r}",  # built next to it, then renamed
                   also=(path,) if path.is_dir() and not path.is_symlink() else ())
    return path


class ZarrArchiveWriter:
    """Streams blocks into a zarr v3 store following the protocol in the module docstring.

    ``times``: every recording time of the run (ms). The time axis is allocated for all of
    them when the store is created, so array shapes never change while the run goes.
    """

    def __init__(self, path, layout: Layout, times, *, chunk_steps: int, compression="lz4",
                 overwrite: bool = False):
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        self.path = prepare_path(path, overwrite)
        self.overwrite = overwrite
        self.layout = layout
        self.times = np.asarray(times, dtype=np.float64)
        self.chunk_steps = int(chunk_steps)
        self.compression = compression
        self.steps_written = 0
        self._root = None
        self._lease: dict | None = None
        self._arrays: list[tuple[str, str, object]] = []  # (group, variable, zarr array)

    def write(self, block: Block) -> None:
        """Create the store on the first call; write ``block`` at the next free steps."""
        if self._root is None:
            self._create()
        with _zarr_config():
            self._write(block)

    def heartbeat(self) -> None:
        """Refresh the lease (called by an idle writer thread at least every HEARTBEAT_S)."""
        if self._root is not None and self._lease is not None:
            self._lease["heartbeat"] = time.time()
            self._root.attrs.update({LEASE_ATTR: self._lease})

    def _create(self) -> None:
        """Build the store under a hidden sibling name, then rename it into place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        tmp = self.path.parent / f".{self.path.name}.dynode-new-{uuid.uuid4().hex[:12]}"
        try:
            self._build(tmp)
            self._install(tmp)
        except BaseException as exc:
            self._release()
            if tmp.exists():
                try:
                    shutil.rmtree(tmp)
                except OSError as rm_exc:
                    exc.add_note(f"dynode: could not remove the unfinished store {str(tmp)!r}: {rm_exc}")
            raise
        import zarr

        root = zarr.open_group(self.path, mode="r+", use_consolidated=False)
        for group in ["/"] + [g.name for g in self.layout.groups]:
            node = root if group == "/" else root[group]
            for name, arr in node.arrays():
                dims = arr.metadata.dimension_names or ()
                if dims and dims[0] == "time":
                    self._arrays.append((group, name, arr))
        self._root = root

    def _remove_leftovers(self) -> None:
        """Remove unfinished stores (``.<name>.dynode-new-*``) of writers killed while creating
        this store; only those whose lease shows their writer is provably gone."""
        for tmp in self.path.parent.glob(f".{self.path.name}.dynode-new-*"):
            meta = tmp / "zarr.json"
            if not meta.is_file():  # killed before its first metadata: whose it is is unknown
                continue
            st = lease_state(_root_meta(tmp).get("attributes", {}))
            if st is not None and st.dead:
                shutil.rmtree(tmp)

    def _build(self, tmp: Path) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec

        lay = self.layout
        empty = Block(np.zeros(0), {g.name: np.zeros((0, lay.batch) + tuple(len(v) for v in g.coords.values()),
                                                     dtype=g.dtype) for g in lay.groups},
                      np.zeros((0, lay.batch, len(lay.inputs)), dtype=lay.stimulus_dtype))
        self._lease = new_lease()
        attrs = {"populations": [g.name for g in lay.groups], **lay.attrs, "status": "incomplete",
                 "steps_written": 0, LEASE_ATTR: self._lease}  # verify_archive checks the groups
        dsets = block_datasets(Layout(**{**lay.__dict__, "attrs": attrs}), empty)
        k, n = self.chunk_steps, len(self.times)
        with _zarr_config():
            for i, (group, ds) in enumerate(dsets.items()):
                enc = {}
                for name, var in ds.variables.items():
                    enc[name] = {"compressors": [Crc32cCodec()]}  # every array is checksummed
                    if var.dims and var.dims[0] == "time":
                        if name == "time":  # written once, below
                            enc[name]["chunks"] = (max(1, min(n, max(k, 2 ** 16))),)
                        else:
                            enc[name] = {"chunks": (k,) + var.shape[1:],
                                         "compressors": _codecs(self.compression)}
                ds.to_zarr(tmp, group=None if group == "/" else group,
                           mode="w-" if i == 0 else "a", consolidated=False, encoding=enc,
                           zarr_format=3)
            root = zarr.open_group(tmp, mode="r+", use_consolidated=False)
            # allocate the whole time axis now: shapes stay fixed while the run writes
            for group in dsets:
                node = root if group == "/" else root[group]
                for name, arr in node.arrays():
                    dims = arr.metadata.dimension_names or ()
                    if dims and dims[0] == "time":
                        arr.resize((n,) + arr.shape[1:])
                        if name == "time":
                            arr[:] = self.times

    def _install(self, tmp: Path) -> None:
        """Rename the finished store ``tmp`` to the store path (replacing an old archive only
        when overwriting, after checking again that no live run writes it)."""
        if not (self.path.exists() or self.path.is_symlink()):
            try:
                os.rename(tmp, self.path)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if not self.overwrite:
                raise ConfigurationError(f"store {str(self.path)!r} was created by someone else while "
                                         "this run started; choose another path") from None
        prepare_path(self.path, self.overwrite)  # re-check right before replacing
        old = self.path.parent / f".{self.path.name}.dynode-old-{uuid.uuid4().hex[:12]}"
        os.rename(self.path, old)
        try:
            os.rename(tmp, self.path)
        except BaseException:
            os.rename(old, self.path)
            raise
        shutil.rmtree(old)

    def _write(self, block: Block) -> None:
        n0, k = self.steps_written, len(block)
        if k == 0:
            return
        n1 = n0 + k
        want = self.times[n0:n1]
        if len(want) != k or not np.allclose(block.times, want, rtol=1e-12, atol=1e-9):
            raise DynodeError(f"the solver saved states at {block.times[:3].tolist()}... ms but the "
                              f"archive expects {want[:3].tolist()}... (steps {n0}..{n1 - 1} of "
                              f"{len(self.times)}); the solver did not honour save_at")
        for group, name, arr in self._arrays:  # whole new chunks, each written atomically
            if name == "rate":
                arr[n0:n1] = block.rates[group]
            elif name == "stimulus":
                arr[n0:n1] = block.stimulus
        self._lease["heartbeat"] = time.time()
        self._root.attrs.update({"steps_written": n1, LEASE_ATTR: self._lease})  # commit
        self.steps_written = n1

    def finish(self, status: str, attrs: Mapping | None = None) -> None:
        """Set the final ``status`` (and extra root attrs) and release the lease, in one write;
        an unfinished run's arrays are cut to the steps written first; then consolidate."""
        if self._root is None:
            return
        try:
            if self.steps_written < len(self.times):
                if status == "complete":
                    raise DynodeError(f"the run ended after {self.steps_written} of {len(self.times)} "
                                      "recording times; the solver did not deliver every save time")
                for _, _, arr in self._arrays:
                    _shrink(arr, self.steps_written)
            final = {k: v for k, v in self._root.attrs.items() if k != LEASE_ATTR}
            final.update({**dict(attrs or {}), "status": status})
            self._root.attrs.put(final)
        finally:
            self._release()
        _consolidate(self.path)

    def _release(self) -> None:
        """This process no longer holds the lease (whether or not it was removed from disk)."""
        if self._lease is not None:
            _HELD.discard(self._lease["token"])
            self._lease = None

    def result(self) -> xr.DataTree | None:
        if self._root is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteArchiveWarning)
            return open_archive(self.path)


class MemoryArchiveWriter:
    """Same interface as :class:`ZarrArchiveWriter`, keeping the blocks in memory."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.blocks: list[Block] = []
        self.steps_written = 0
        self.status = "incomplete"
        self.attrs: dict = {}

    def write(self, block: Block) -> None:
        self.blocks.append(Block(block.times.copy(), {k: v.copy() for k, v in block.rates.items()},
                                 None if block.stimulus is None else block.stimulus.copy()))
        self.steps_written += len(block)

    def finish(self, status: str, attrs: Mapping | None = None) -> None:
        self.status, self.attrs = status, dict(attrs or {})

    def result(self) -> xr.DataTree | None:
        if not self.blocks:
            return None
        b = self.blocks
        merged = Block(np.concatenate([x.times for x in b]),
                       {g.name: np.concatenate([x.rates[g.name] for x in b]) for g in self.layout.groups},
                       None if b[0].stimulus is None else np.concatenate([x.stimulus for x in b]))
        attrs = {**self.layout.attrs, **self.attrs, "status": self.status,
                 "steps_written": self.steps_written}
        dsets = block_datasets(Layout(**{**self.layout.__dict__, "attrs": attrs}), merged)
        return xr.DataTree.from_dict(dsets)


# -- reading --------------------------------------------------------------------------------
def _root_meta(path: Path) -> dict:
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        for tmp in path.parent.glob(f".{path.name}.dynode-new-*"):  # a run creating it now?
            if not (tmp / "zarr.json").is_file():
                continue
            st = lease_state(_root_meta(tmp).get("attributes", {}))
            if st is not None and not st.dead and st.problem is None:
                raise ArchiveLockedError(f"archive {str(path)!r} is being created by {st.describe()}; "
                                         "open it again once the run has written its first block",
                                         pid=st.pid, host=st.host, heartbeat_age=st.age)
        raise ArchiveError(f"{str(path)!r} is not a zarr v3 store (no zarr.json); was it written by "
                           "dynode.simulate(store=...)?")
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{str(meta_file)!r} is not valid JSON ({exc}); the store's root metadata "
                           "is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        raise ArchiveError(f"{str(meta_file)!r} is not zarr v3 group metadata (a JSON object with an "
                           "'attributes' object)")
    return meta


def _archive_attrs(path: Path) -> dict:
    """The root attributes of a dynode archive; anything else is refused."""
    attrs = _root_meta(path).get("attributes", {})
    if "dynode_archive" not in attrs:
        raise ArchiveError(f"{str(path)!r} is a zarr store but not a dynode archive (no "
                           "'dynode_archive' attribute); dynode does not read, repair or replace it")
    n = attrs.get("steps_written", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ArchiveError(f"archive {str(path)!r}: 'steps_written' is {n!r}, not a count of steps; the "
                           "root metadata is damaged")
    return attrs


@dataclass(frozen=True)
class Damage:
    """Damaged data: ``group`` (``"/"`` or a population), ``variable``, the time indices
    ``steps = (first, last)`` and times ``times = (first, last)`` in ms (both ends included;
    None for an array without a time axis), and ``reason``. ``variable`` is ``""`` when the
    damage is a whole group (missing, or not declared) or, in ``"/"``, a root attribute."""

    group: str
    variable: str
    steps: tuple[int, int] | None
    times: tuple[float, float] | None
    reason: str

    def __str__(self) -> str:
        if not self.variable:  # the group itself, or (for "/") the root attributes
            where = "root attributes" if self.group == "/" else f"group {self.group!r}"
        else:
            where = self.variable if self.group == "/" else f"{self.group}/{self.variable}"
        if self.steps is None:
            return f"{where}: {self.reason}"
        span = "" if self.times is None else f", t = {self.times[0]:g}..{self.times[1]:g} ms"
        return f"{where}: steps {self.steps[0]}..{self.steps[1]}{span}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_archive` found: ``damaged`` is empty when every chunk of the
    committed steps exists (and, when ``read``, decodes with a matching checksum)."""

    path: str
    steps_written: int
    chunks: int
    read: bool
    checksummed: bool
    damaged: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        return not self.damaged

    def __str__(self) -> str:
        how = "read and checksummed" if self.read else "checked to exist"
        head = (f"archive {self.path!r}: {self.chunks} chunks of {self.steps_written} committed steps "
                f"{how}")
        if not self.checksummed:
            head += " (written without checksums: corruption inside a chunk is not detectable)"
        if self.ok:
            return head + ": intact"
        return "\n  ".join([head + f"; {len(self.damaged)} damaged:"] + [str(d) for d in self.damaged])


def _chunk_faults(arr, folder: Path, grid, *, read: bool) -> list[tuple[tuple[int, ...], str]]:
    """The chunks of the zarr array ``arr`` (stored under ``folder``) among ``grid`` (chunk
    coordinates) whose file is missing or, when ``read``, that do not decode or fail their
    checksum; with the reason."""
    faults = []
    for coords in grid:
        if not (folder / arr.metadata.encode_chunk_key(coords)).is_file():
            faults.append((coords, "chunk file missing"))
            continue
        if read:
            try:
                arr.get_block_selection(coords)
            except Exception as exc:  # reported as damage, with its cause
                faults.append((coords, "checksum mismatch" if "checksum" in str(exc).lower()
                               else f"does not decode ({type(exc).__name__}: {exc})"[:200]))
    return faults


def _damages(found, steps_of: Mapping[tuple[str, str], int], steps: int,
             times: np.ndarray | None) -> list[Damage]:
    """``found``: (group, variable, time-chunk index or None, reason), sorted by group and
    variable; consecutive time chunks with one reason become one :class:`Damage` (the steps
    they hold below ``steps``)."""
    damaged = []
    for (gname, vname, reason), items in itertools.groupby(found, key=lambda f: (f[0], f[1], f[3])):
        idx = [i for _, _, i, _ in items]
        if idx[0] is None:
            damaged.append(Damage(gname, vname, None, None, reason))
            continue
        k = steps_of[gname, vname]
        runs = [list(g) for _, g in itertools.groupby(idx, key=lambda i, c=itertools.count(): i - next(c))]
        for run in runs:
            first, last = run[0] * k, min((run[-1] + 1) * k, steps) - 1
            damaged.append(Damage(gname, vname, (first, last), _span(times, first, last), reason))
    return damaged


def _span(times: np.ndarray | None, first: int, last: int) -> tuple[float, float] | None:
    return None if times is None or last >= len(times) else (float(times[first]), float(times[last]))


def _declared(attrs: Mapping) -> tuple[list[str] | None, list[str], bool, list[Damage]]:
    """What the root attributes declare: the populations (None when not said), the stimulus
    conditions, whether there are stimulus inputs; and the attributes that are malformed."""
    bad = []
    pops = attrs.get("populations")
    if isinstance(pops, str):
        try:
            pops = json.loads(pops)
        except json.JSONDecodeError:
            pass  # reported below
    if pops is not None and not (isinstance(pops, list) and all(isinstance(p, str) for p in pops)):
        bad.append(Damage("/", "", None, None, f"the root attribute 'populations' is {_short(pops)}, "
                                               "not a list of population names"))
        pops = None
    conditions, inputs = [], False
    if "config" in attrs:
        try:
            stim = json.loads(attrs["config"]).get("stimulus") or {}
            conditions, inputs = [str(c) for c in stim.get("conditions", [])], bool(stim.get("inputs"))
        except (TypeError, AttributeError, json.JSONDecodeError) as exc:
            bad.append(Damage("/", "", None, None, "the root attribute 'config' is not the run's "
                                                   f"configuration as JSON ({type(exc).__name__})"))
    return pops, conditions, inputs, bad


def _scan(path: Path, attrs: Mapping, *, read: bool) -> VerifyReport:
    """Check the store against what the root ``attrs`` declare (every population's group and
    the arrays it must hold, and no other group), and every chunk of the committed steps (and
    of the arrays without a time axis)."""
    import zarr

    steps_written = int(attrs.get("steps_written", 0))
    root = zarr.open_group(path, mode="r", use_consolidated=False)
    try:
        times = np.asarray(root["time"][:], dtype=np.float64)
    except Exception:  # the time axis itself is damaged: it is reported below, without times
        times = None
    pops, conditions, inputs, damaged = _declared(attrs)
    groups = dict(sorted(root.groups(), key=lambda kv: kv[0]))
    if pops is not None:
        for name in pops:
            if name not in groups:
                damaged.append(Damage(name, "", None, None, "population group missing from the store "
                                      "(the root attribute 'populations' lists it)"))
        for name in groups:
            if name not in pops:
                damaged.append(Damage(name, "", None, None, "group not declared: the root attribute "
                                      f"'populations' lists only {pops}"))
    found: list[tuple[str, str, int | None, str]] = []  # (group, variable, chunk index, reason)
    steps_of: dict[tuple[str, str], int] = {}
    chunks, checksummed = 0, True
    for gname, node in [("/", root)] + list(groups.items()):
        folder = path if gname == "/" else path / gname
        arrays = dict(sorted(node.arrays(), key=lambda kv: kv[0]))
        want = {"time", "sample", *conditions}
        if gname == "/":
            want |= {"input", "stimulus"} if inputs else set()
        elif pops is None or gname in pops:
            want |= {"rate", *(d for d in (arrays["rate"].metadata.dimension_names or ())
                                if d is not None)} if "rate" in arrays else {"rate"}
        damaged += [Damage(gname, v, None, None, "array missing from the store (the archive's "
                           "attributes declare it)") for v in sorted(want - set(arrays))]
        for vname, arr in arrays.items():
            checksummed &= any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)
            dims = arr.metadata.dimension_names or ()
            timed = bool(dims) and dims[0] == "time" and vname != "time"
            shape = list(arr.shape)
            if timed:
                if shape[0] < steps_written:
                    damaged.append(Damage(gname, vname, (shape[0], steps_written - 1),
                                          _span(times, shape[0], steps_written - 1),
                                          f"the array ends after {shape[0]} steps"))
                shape[0] = min(shape[0], steps_written)
                steps_of[gname, vname] = arr.chunks[0]
            grid = list(itertools.product(*[range(-(-s // c)) for s, c in zip(shape, arr.chunks)]))
            chunks += len(grid)
            found += [(gname, vname, coords[0] if timed else None, why)
                      for coords, why in _chunk_faults(arr, folder / vname, grid, read=read)]
    damaged += _damages(found, steps_of, steps_written, times)
    return VerifyReport(str(path), steps_written, chunks, read, checksummed, tuple(damaged))


def verify_archive(path) -> VerifyReport:
    """Check the store against what the archive declares, and read every chunk of its
    committed steps with its crc32c checksum.

    Returns the :class:`VerifyReport` when the archive is intact; raises
    :class:`~dynode.errors.ArchiveCorruptError` (carrying the report) naming each damaged
    population, variable and step range: a group of a population that the root attribute
    ``populations`` lists, or an array the archive declares (a population's ``rate`` and
    coordinates, the stimulus and condition arrays of its ``config``), that is missing; a
    group that it does not declare; a malformed ``populations`` or ``config`` attribute; an
    array shorter than the committed steps; a chunk file that is missing, or that does not
    decode or fails its checksum. Only committed steps (``steps_written``) are checked.
    """
    path = Path(path)
    report = _scan(path, _archive_attrs(path), read=True)
    if not report.ok:
        raise ArchiveCorruptError(str(report), report=report)
    return report


class _CheckedArray(BackendArray):
    """A lazily read array of an archive (xarray's zarr wrapper inside). A read that fails on
    a damaged chunk raises :class:`~dynode.errors.ArchiveCorruptError` naming the group,
    variable and steps (found by checking the chunks that the read touched); every other
    error passes unchanged. A read that succeeds costs one extra call."""

    __slots__ = ("_inner", "_path", "_group", "_name", "shape", "dtype")

    def __init__(self, inner, path: Path, group: str, name: str):
        self._inner, self._path, self._group, self._name = inner, path, group, name
        self.shape, self.dtype = inner.shape, inner.dtype

    def get_array(self):
        return self._inner.get_array()

    def __getitem__(self, key):
        try:
            return self._inner[key]
        except Exception as exc:
            err = self._corruption(key)
            if err is None:
                raise
            raise err from exc

    async def async_getitem(self, key):
        try:
            return await self._inner.async_getitem(key)
        except Exception as exc:
            err = self._corruption(key)
            if err is None:
                raise
            raise err from exc

    def _corruption(self, key) -> ArchiveCorruptError | None:
        """The error to raise when a chunk that ``key`` touches is damaged, else None."""
        import zarr

        arr = self._inner.get_array()
        parts = tuple(getattr(key, "tuple", ()))
        parts += (slice(None),) * (len(arr.shape) - len(parts))
        touched = []
        for part, size, chunk in zip(parts, arr.shape, arr.chunks):
            idx = np.arange(size)[part] if isinstance(part, slice) else np.asarray(part).ravel() % size
            touched.append(sorted(set((idx // chunk).tolist())))
        folder = self._path / ("" if self._group == "/" else self._group) / self._name
        grid = list(itertools.product(*touched))
        # a missing chunk reads as the fill value, without an error: only what failed is named
        faults = [f for f in _chunk_faults(arr, folder, grid, read=True) if f[1] != "chunk file missing"]
        if not faults:
            return None
        dims = arr.metadata.dimension_names or ()
        steps = arr.shape[0] if dims and dims[0] == "time" else 0
        try:
            times = np.asarray(zarr.open_array(self._path / "time", mode="r")[:], dtype=np.float64)
        except Exception:  # the time axis is damaged too: the steps are named without times
            times = None
        found = [(self._group, self._name, coords[0] if steps else None, why) for coords, why in faults]
        damaged = _damages(found, {(self._group, self._name): arr.chunks[0]}, steps, times)
        report = VerifyReport(str(self._path), steps, len(grid), True, True, tuple(damaged))
        what = self._name if self._group == "/" else f"{self._name} of population {self._group!r}"
        return ArchiveCorruptError(
            f"archive {str(self._path)!r}: reading {what} hit damaged data on disk:\n  "
            + "\n  ".join(map(str, damaged)) + "\nThat data cannot be repaired in place: re-run the "
            "simulation (dynode.archive.archive_config(tree) is its configuration) or read around "
            "it (tree.isel(time=...)); dynode.archive.verify_archive(path) lists every damaged chunk "
            "of the archive, and open_archive(path, verify=True) checks them all before use",
            report=report)


def _check_reads(tree: xr.DataTree, path: Path) -> None:
    """Put a :class:`_CheckedArray` under every lazily read variable of ``tree`` (xarray's
    lazy arrays hold the backend array in ``.array``; views made later share it)."""
    from xarray.backends.zarr import ZarrArrayWrapper
    from xarray.core.indexing import ExplicitlyIndexed

    for node in tree.subtree:
        group = node.path.strip("/") or "/"
        for name, var in node.to_dataset(inherit=False).variables.items():
            holder = var._data
            while isinstance(holder, ExplicitlyIndexed) and hasattr(holder, "array"):
                if isinstance(holder.array, ZarrArrayWrapper):
                    holder.array = _CheckedArray(holder.array, path, group, str(name))
                    break
                holder = holder.array


def open_archive(path, *, trim: bool = True, verify: bool = False) -> xr.DataTree:
    """Open an archive lazily as an ``xarray.DataTree`` (nothing is read until used).

    The store must hold what the archive declares and every chunk of the committed steps
    must exist (a cheap check of the files); with ``verify`` every chunk is also read and
    checksummed (:func:`verify_archive`). Damage raises
    :class:`~dynode.errors.ArchiveCorruptError`, and so does a later lazy read that hits a
    chunk failing its checksum (naming the population, variable and steps); plain
    ``xarray.open_datatree(path, engine="zarr")`` still opens a damaged store (missing chunks
    read as NaN). An archive whose run did not complete gives an
    :class:`IncompleteArchiveWarning` that says whether a live run is still writing it; with
    ``trim`` (default) steps past the last committed block (``steps_written``) are cut off.
    """
    path = Path(path)
    meta = _root_meta(path)
    attrs = _archive_attrs(path)
    lease = lease_state(attrs)
    live = lease is not None and not lease.dead and lease.problem is None
    untrusted = lease is not None and not lease.dead and lease.problem is not None
    consolidated = bool(meta.get("consolidated_metadata"))
    report = _scan(path, attrs, read=verify)  # before xarray reads the (consolidated) metadata
    if not report.ok:
        raise ArchiveCorruptError(str(report) + "\n(plain xarray.open_datatree(path, engine='zarr') "
                                  "may open it anyway: missing chunks read as NaN)", report=report)
    try:
        tree = xr.open_datatree(path, engine="zarr", consolidated=consolidated)
    except ValueError as exc:
        if live:
            raise ArchiveLockedError(f"archive {str(path)!r} is being written by {lease.describe()} "
                                     f"and does not open right now ({exc}): the run is cutting its "
                                     "arrays after a failure; open it again in a moment",
                                     pid=lease.pid, host=lease.host, heartbeat_age=lease.age) from exc
        if attrs.get("status") == "complete":
            raise
        how = ("dynode.archive.repair_archive(path, force=True) (its 'writer' lease cannot be "
               f"trusted: {lease.problem})" if untrusted else "dynode.archive.repair_archive(path)")
        raise ArchiveError(f"the incomplete archive {str(path)!r} does not open ({exc}); the run was "
                           f"killed while cutting its arrays after a failure: {how} cuts every "
                           "array back to the last committed block") from exc
    _check_reads(tree, path)
    status = tree.attrs.get("status", "unknown")
    n = int(attrs.get("steps_written", tree.sizes.get("time", 0)))
    if status != "complete":
        if live:
            who = f"being written by {lease.describe()}; it holds {n} committed time steps so far"
        elif untrusted:
            who = (f"its {LEASE_ATTR!r} lease cannot be trusted ({lease.problem}), so whether a run "
                   f"still writes it is unknown; it holds {n} committed time steps (if no run "
                   "does, dynode.archive.repair_archive(path, force=True) breaks the lease and "
                   "cuts the arrays on disk to them)")
        elif lease is not None:
            who = (f"its writer, {lease.describe()}, is gone; it holds {n} committed time steps "
                   "(dynode.archive.repair_archive(path) cuts the arrays on disk to them)")
        else:
            who = f"it holds {n} committed time steps"
        warnings.warn(f"archive {str(path)!r}: status {status!r}, {who}", IncompleteArchiveWarning,
                      stacklevel=2)
        if trim and tree.sizes.get("time", 0) > n:
            tree = tree.isel(time=slice(0, n))
    return tree


def repair_archive(path, *, force: bool = False) -> int:
    """Cut every time-indexed array of an interrupted archive back to ``steps_written`` (the
    last committed block): the NaN tail of a killed run goes, and a store whose arrays
    disagree in length opens with plain xarray again. Returns that step count.

    Refuses a store that dynode did not write, and an archive that a live run is writing
    (:class:`~dynode.errors.ArchiveLockedError`). The lease of a writer that is provably gone
    (same host, process ended) is broken automatically; ``force=True`` also breaks a stale
    one (heartbeat older than :data:`LEASE_TIMEOUT_S` s: a writer killed on another host) and
    an untrustworthy one (malformed, or a heartbeat that is not a time or lies in the future:
    see the module docstring). This is the way to clear a ``writer`` lease.
    """
    import zarr

    path = Path(path)
    attrs = _archive_attrs(path)
    _check_lease(path, attrs, doing="repair", force=force)
    n = int(attrs.get("steps_written", 0))
    if attrs.get("status") == "complete" and LEASE_ATTR not in attrs:
        return n
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    for node in [root] + [g for _, g in root.groups()]:
        for _, arr in node.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == "time" and arr.shape[0] != n:
                if arr.shape[0] < n:
                    raise ArchiveError(f"archive {str(path)!r}: 'steps_written' is {n} but the array "
                                       f"{arr.path!r} holds only {arr.shape[0]} steps; the root "
                                       "metadata is damaged")
                _shrink(arr, n)
    if LEASE_ATTR in root.attrs:
        root.attrs.put({k: v for k, v in root.attrs.items() if k != LEASE_ATTR})
    _consolidate(path)
    return n


def archive_config(tree: xr.DataTree) -> dict:
    """The run's full configuration (model, solver, dt, record, stimulus) as a dict."""
    return json.loads(tree.attrs["config"])


def populations(tree: xr.DataTree) -> list[str]:
    """Names of the recorded populations (the groups holding ``rate``)."""
    present = [name for name, node in tree.children.items() if "rate" in node.data_vars]
    order = tree.attrs.get("populations")
    if isinstance(order, str):
        order = json.loads(order)
    if order:  # the recording order (zarr lists groups alphabetically)
        return [n for n in order if n in present] + [n for n in present if n not in order]
    return present


def select_conditions(tree: xr.DataTree, **conditions) -> xr.DataTree:
    """The samples whose condition coordinates match, e.g. ``contrast=0.5`` or
    ``contrast=[0.25, 0.5]`` (a list means any of its values)."""
    root = tree.to_dataset()
    mask = np.ones(root.sizes["sample"], dtype=bool)
    for name, value in conditions.items():
        if name not in root.coords or root[name].dims != ("sample",):
            known = [c for c in root.coords if root[c].dims == ("sample",) and c != "sample"]
            raise ConfigurationError(f"unknown condition {name!r}; the archive's conditions are {known}")
        values = np.asarray(root[name].values)
        wanted = value if isinstance(value, (list, tuple, set, np.ndarray)) else [value]
        mask &= np.isin(values.astype(object) if values.dtype.kind == "T" else values, list(wanted))
    if not mask.any():
        raise ConfigurationError(f"no sample matches {conditions}")
    return tree.isel(sample=np.flatnonzero(mask))


def time_window(tree: xr.DataTree, start: float | None = None, stop: float | None = None) -> xr.DataTree:
    """The steps with ``start <= time <= stop`` (ms, both ends included)."""
    return tree.sel(time=slice(start, stop))


def population_time_course(tree: xr.DataTree, population: str, *, statistic: str = "mean",
                           block_steps: int | None = None) -> xr.DataArray:
    """The population's ``(time, sample)`` time course: its rate averaged over units
    (``statistic="mean"``) or their standard deviation (``"std"``).

    Reads the archive block by block along time, so memory stays bounded. A population
    recorded with ``reduce="mean"`` / ``"mean_std"`` returns the stored course.
    """
    if population not in tree.children or "rate" not in tree[population].data_vars:
        raise ConfigurationError(f"no population {population!r} in the archive; recorded: "
                                 f"{populations(tree)}")
    if statistic not in ("mean", "std"):
        raise ConfigurationError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    rate = tree[population].to_dataset()["rate"]
    red = rate.attrs.get("reduction")
    if red == statistic:
        out = rate.load()
    elif red == "mean_std":
        out = rate.sel(statistic=statistic).load()
    elif red is not None:
        raise ConfigurationError(f"population {population!r} was recorded with reduce={red!r}; its "
                                 f"{statistic} over units cannot be computed from that")
    else:
        units = [d for d in rate.dims if d not in ("time", "sample")]
        step = block_steps or int(rate.encoding.get("chunks", (64,))[0] or 64)
        parts = []
        for i in range(0, rate.sizes["time"], step):
            part = rate.isel(time=slice(i, i + step)).astype(np.float64)
            parts.append(part.mean(units) if statistic == "mean" else part.std(units))
        out = xr.concat(parts, dim="time").astype(rate.dtype)
    out.attrs = {"units": rate.attrs.get("units", "1"),
                 "long_name": f"{statistic} rate of {population} over units"}
    out.name = population
    return out


def population_time_courses(tree: xr.DataTree, names: Sequence[str] | None = None, *,
                 statistic: str = "mean") -> xr.Dataset:
    """:func:`population_time_course` of several populations (default all) as one Dataset."""
    names = populations(tree) if names is None else list(names)
    return xr.Dataset({n: population_time_course(tree, n, statistic=statistic) for n in names})


def to_brainscore(tree: xr.DataTree, population: str, bin_edges: Sequence[float], path=None, *,
                  format: str | None = None, overwrite: bool = False) -> xr.DataArray:
    """A Brain-Score-style assembly ``(presentation, neuroid, time_bin)`` of one population.

    Bin ``j`` holds the mean rate over the recorded times ``t`` with
    ``bin_edges[j] <= t < bin_edges[j + 1]`` (ms), with coordinates ``time_bin_start`` /
    ``time_bin_end``. Neuroid coordinates: ``neuroid_id`` (``"<layer>.<channel>.<y>.<x>"``),
    ``layer``, ``channel``, ``channel_x``, ``channel_y``; presentations carry ``stimulus_id``,
    ``sample`` and the condition coordinates. With ``path`` the assembly is also written, as
    netCDF (``.nc``, default) or zarr (``.zarr``, or ``format="zarr"``); an existing file is
    replaced only with ``overwrite=True`` (and only by its own kind: a netCDF file by netCDF, a
    zarr store that is not a dynode archive by zarr).
    """
    if population not in tree.children or "rate" not in tree[population].data_vars:
        raise ConfigurationError(f"no population {population!r} in the archive; recorded: "
                                 f"{populations(tree)}")
    rate = tree[population].to_dataset()["rate"]
    fmt = None if path is None else format or ("zarr" if str(path).endswith(".zarr") else "netcdf")
    if fmt is not None:
        _check_export_path(Path(path), fmt, overwrite)
    if rate.attrs.get("reduction") is not None:
        raise ConfigurationError(f"population {population!r} was recorded with reduce="
                                 f"{rate.attrs['reduction']!r}; an assembly needs unit-level recordings")
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ConfigurationError("bin_edges must be at least two strictly increasing times (ms)")
    times = rate["time"].values
    unit_dims = [d for d in rate.dims if d not in ("time", "sample")]
    n_units = int(np.prod([rate.sizes[d] for d in unit_dims])) if unit_dims else 1
    data = np.empty((rate.sizes["sample"], n_units, len(edges) - 1), dtype=np.float32)
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        idx = np.flatnonzero((times >= lo) & (times < hi))
        if not len(idx):
            raise ConfigurationError(f"time bin [{lo:g}, {hi:g}) ms holds no recorded time; recorded "
                                     f"times span [{times.min():g}, {times.max():g}] ms")
        mean = rate.isel(time=idx).astype(np.float64).mean("time")
        data[:, :, j] = mean.transpose("sample", *unit_dims).values.reshape(rate.sizes["sample"], -1)
    grids = np.meshgrid(*[rate[d].values if d in rate.coords else np.arange(rate.sizes[d])
                          for d in unit_dims], indexing="ij")
    flat = {d: g.ravel() for d, g in zip(unit_dims, grids)}
    zeros = np.zeros(n_units, dtype=np.int64)
    channel, cy, cx = flat.get("channel", zeros), flat.get("y", zeros), flat.get("x", zeros)
    neuroid_id = np.array([f"{population}.{c}.{y}.{x}" for c, y, x in zip(channel, cy, cx)], dtype=object)
    root = tree.to_dataset()
    pres = {"sample": ("presentation", root["sample"].values, SAMPLE_ATTRS),
            "stimulus_id": ("presentation", np.array([f"sample{i}" for i in root["sample"].values],
                                                    dtype=object), {"long_name": "stimulus identifier"})}
    for name, coord in root.coords.items():
        if coord.dims == ("sample",) and name != "sample":
            vals = coord.values
            pres[name] = ("presentation", vals.astype(object) if vals.dtype.kind == "T" else vals,
                          dict(coord.attrs))
    assembly = xr.DataArray(
        data, dims=("presentation", "neuroid", "time_bin"),
        coords={**pres,
                "neuroid_id": ("neuroid", neuroid_id, {"long_name": "unit identifier: population.channel.y.x"}),
                "layer": ("neuroid", np.array([population] * n_units, dtype=object),
                          {"long_name": "population (model area)"}),
                "channel": ("neuroid", channel, {"units": "1", "long_name": "channel index"}),
                "channel_x": ("neuroid", cx, {"units": "1", "long_name": "x position (column index)"}),
                "channel_y": ("neuroid", cy, {"units": "1", "long_name": "y position (row index)"}),
                "time_bin_start": ("time_bin", edges[:-1], {"units": "ms", "long_name": "start of the time bin"}),
                "time_bin_end": ("time_bin", edges[1:], {"units": "ms", "long_name": "end of the time bin"})},
        name=f"{population}_activations",
        attrs={"units": rate.attrs.get("units", RATE_UNITS),
               "long_name": f"mean rate of {population} per time bin",
               "source": "dynode archive", "run_id": tree.attrs.get("run_id", "")})
    if fmt == "netcdf":
        assembly.to_netcdf(path, mode="w")
    elif fmt == "zarr":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            ds = assembly.to_dataset()
            enc = {name: {"compressors": _codecs("zstd" if name == assembly.name else None)}
                   for name in ds.variables}  # checksummed, as every array dynode writes
            ds.to_zarr(path, mode="w" if overwrite else "w-", consolidated=True, zarr_format=3,
                       encoding=enc)
    return assembly


def _check_export_path(path: Path, fmt: str, overwrite: bool) -> None:
    """Before any work: the export format is known and an existing ``path`` is replaced only
    with ``overwrite`` and only when it is an export of the same kind."""
    if fmt not in ("netcdf", "zarr"):
        raise ConfigurationError(f"format must be 'netcdf' or 'zarr', got {fmt!r}")
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise ConfigurationError(f"{str(path)!r} already exists; pass overwrite=True to replace it, or "
                                 "choose another path")
    if fmt == "netcdf" and not path.is_file():
        raise ConfigurationError(f"{str(path)!r} is not a file; refusing to replace it with a netCDF "
                                 "file even with overwrite=True")
    if fmt == "zarr":
        if not (path.is_dir() and (path / "zarr.json").is_file()):
            raise ConfigurationError(f"{str(path)!r} is not a zarr store; refusing to replace it even "
                                     "with overwrite=True")
        if "dynode_archive" in _root_meta(path).get("attributes", {}):
            raise ConfigurationError(f"{str(path)!r} is a dynode simulation archive; refusing to replace "
                                     "it with an assembly even with overwrite=True")
