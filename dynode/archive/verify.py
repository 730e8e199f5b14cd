"""Verification and repair of an archive on disk: what is damaged, and cutting back to what is committed.

Integrity: every array carries a crc32c checksum codec (a corrupted chunk raises on read).
:func:`~dynode.archive.open_archive` checks the store against what its root attributes declare (a group
for every population in ``populations`` with the arrays it must hold, no undeclared group,
the stimulus and condition arrays of the ``config``) and that every chunk of the committed
steps exists; :func:`verify_archive` also reads and checksums them all. A lazy read of a
tree from :func:`open_archive` that hits a damaged chunk raises
:class:`~dynode.errors.ArchiveCorruptError` naming the population, variable and steps
(:mod:`dynode.archive.reading`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynode.archive.layout import _archive_attrs, _consolidate, _shrink, _timed_arrays
from dynode.archive.lease import LEASE_ATTR, _check_lease, _short
from dynode.errors import ArchiveCorruptError, ArchiveError

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
        for run in (list(g) for _, g in itertools.groupby(idx, key=lambda i, c=itertools.count(): i - next(c))):
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
        with contextlib.suppress(json.JSONDecodeError):  # text that is not JSON is reported below
            pops = json.loads(pops)
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
        damaged += [Damage(name, "", None, None, "population group missing from the store (the root "
                           "attribute 'populations' lists it)") for name in pops if name not in groups]
        damaged += [Damage(name, "", None, None, "group not declared: the root attribute 'populations' "
                           f"lists only {pops}") for name in groups if name not in pops]
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
    for _, _, arr in _timed_arrays(root):
        if arr.shape[0] < n:
            raise ArchiveError(f"archive {str(path)!r}: 'steps_written' is {n} but the array "
                               f"{arr.path!r} holds only {arr.shape[0]} steps; the root metadata "
                               "is damaged")
        if arr.shape[0] != n:
            _shrink(arr, n)
    if LEASE_ATTR in root.attrs:
        root.attrs.put({k: v for k, v in root.attrs.items() if k != LEASE_ATTR})
    _consolidate(path)
    return n
