"""The archive's layout and store format: what a dynode archive holds, and how it sits in zarr.

Layout (a ``xarray.DataTree``; on disk a zarr v3 store, one zarr group per node)::

    /                      root: coords time (ms), sample (+ condition coords on sample)
        stimulus           (time, sample, input): mean of each stimulus input over its units
        attrs              dynode_archive, status, run_id, created, config (JSON), solver,
                           dt, t0, t_end, solver_stats (JSON), steps_written, *_version
    /<population>          one group per recorded population
        rate               (time, sample, channel, y, x) -- fewer dims for vector populations,
                           (time, sample) after reduce="mean"/"std",
                           (time, sample, statistic) after reduce="mean_std"
        drive[, drive_exc, drive_inh]   as rate (Record observe=["drive"])
        lfp, bold          (time, sample) (Record observe=["lfp", "bold"]; dynode.observe)
        coords             time, sample, condition coords, channel, y, x (kept unit indices)

Every variable carries CF-style ``units`` / ``long_name`` attributes; time is float ms.

A run's :class:`Layout` (what does not change along time) comes from its
:class:`~dynode.record.Record` (:func:`dynode.record.layout`); the writers
(:mod:`dynode.archive.writer`) turn each :class:`Block` of steps into these datasets
(:func:`block_datasets`). Every data array is checksummed (:func:`_codecs`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.archive.lease import lease_state
from dynode.errors import ArchiveError, ArchiveLockedError, ConfigurationError

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
                      "y", "z", "feature", "drive", "drive_exc", "drive_inh", "lfp", "bold"})
COMPRESSIONS = ("lz4", "zstd", None)


@dataclass(frozen=True)
class VariableSpec:
    """A population's variable besides ``rate`` (an observation, :mod:`dynode.observe`): its
    per-sample ``dims`` (a subset of the group's, or none) and CF attrs."""

    name: str
    dims: tuple[str, ...]
    attrs: dict


@dataclass(frozen=True)
class GroupSpec:
    """One population's group: the stored per-sample ``dims``, their ``coords``, ``rate`` attrs;
    ``variables``: the observations stored next to ``rate`` (same dtype)."""

    name: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    attrs: dict
    dtype: np.dtype
    variables: tuple[VariableSpec, ...] = ()


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
    (k, batch, n_inputs) or None; ``observed`` {population: {variable: (k, batch, *dims)}}: the
    variables of :attr:`GroupSpec.variables`."""

    times: np.ndarray
    rates: dict[str, np.ndarray]
    stimulus: np.ndarray | None
    observed: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)

    def array(self, group: str, name: str) -> np.ndarray | None:
        """The block's data of the archive array ``name`` of ``group`` (``"/"``: the root), or
        None for an array that is not written block by block (the time coordinate)."""
        if group == "/":
            return self.stimulus if name == "stimulus" else None
        if name == "rate":
            return self.rates[group]
        return self.observed.get(group, {}).get(name)

    def copy(self) -> Block:
        return Block(self.times.copy(), {k: v.copy() for k, v in self.rates.items()},
                     None if self.stimulus is None else self.stimulus.copy(),
                     {g: {k: v.copy() for k, v in d.items()} for g, d in self.observed.items()})

    @staticmethod
    def concat(blocks: Sequence[Block]) -> Block:
        """The blocks one after the other (at least one)."""
        b0 = blocks[0]
        return Block(np.concatenate([b.times for b in blocks]),
                     {g: np.concatenate([b.rates[g] for b in blocks]) for g in b0.rates},
                     None if b0.stimulus is None else np.concatenate([b.stimulus for b in blocks]),
                     {g: {k: np.concatenate([b.observed[g][k] for b in blocks]) for k in d}
                      for g, d in b0.observed.items()})


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


def block_datasets(layout: Layout, block: Block) -> dict[str, xr.Dataset]:
    """The block as one Dataset per group (``"/"`` and one per population)."""
    base = {"time": ("time", np.asarray(block.times, dtype=np.float64), TIME_ATTRS),
            "sample": ("sample", np.arange(layout.batch, dtype=np.int64), SAMPLE_ATTRS),
            **{name: ("sample", values, CONDITION_ATTRS.get(name, {"long_name": f"stimulus condition: {name}"}))
               for name, values in layout.conditions.items()}}
    root_vars = {}
    root_coords = dict(base)
    if layout.inputs:
        root_coords["input"] = ("input", np.array(list(layout.inputs), dtype=object),
                                {"long_name": "stimulus input"})
        root_vars["stimulus"] = (("time", "sample", "input"), block.stimulus,
                                 {"units": RATE_UNITS, "long_name": "stimulus intensity, mean over its units"})
    out = {"/": xr.Dataset(root_vars, coords=root_coords, attrs=layout.attrs)}
    for g in layout.groups:
        coords = {**base, **{d: (d, v, {"units": "1", "long_name": _DIM_NAMES.get(d, d)})
                             for d, v in g.coords.items()}}
        data = {"rate": (("time", "sample") + g.dims, block.rates[g.name], g.attrs)}
        rate_shape = np.shape(block.rates[g.name])
        for v in g.variables:
            values = block.observed.get(g.name, {}).get(v.name)
            if values is None:
                if len(block):
                    raise ArchiveError(f"internal: the block has no {v.name!r} of population {g.name!r}")
                values = np.zeros(rate_shape[:2] + tuple(rate_shape[2 + g.dims.index(d)] for d in v.dims),
                                  dtype=g.dtype)
            data[v.name] = (("time", "sample") + v.dims, values, v.attrs)
        out[g.name] = xr.Dataset(data, coords=coords)
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


def _timed_arrays(root):
    """``(group, name, array)`` of every array of an open zarr store whose first dimension is
    time (``"/"`` first, then each population's group)."""
    for group, node in [("/", root), *root.groups()]:
        for name, arr in node.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == "time":
                yield group, name, arr


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(str(path))



# -- the store's root metadata -------------------------------------------------------------
def _root_meta(path: Path) -> dict:
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        for _, st in _unfinished(path):  # a run creating it now?
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


def _unfinished(path: Path):
    """``(folder, lease state)`` of each store being built for ``path`` (``.<name>.dynode-new-*``),
    except those killed before their first metadata (whose they are is unknown)."""
    for tmp in path.parent.glob(f".{path.name}.dynode-new-*"):
        if (tmp / "zarr.json").is_file():
            yield tmp, lease_state(_root_meta(tmp).get("attributes", {}))


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
