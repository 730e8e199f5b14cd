"""Writers: where a run's blocks of steps go (a zarr store, or memory).

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

Every file the running writer puts into the store (root attributes: the ``steps_written``
commit and the lease's heartbeat; the final status; consolidated metadata; chunks that zarr
writes) is written under a hidden name in the store's parent folder
(``.<name>.dynode-put-<hex>``) and renamed into place (:class:`_OutsideTempStore`). zarr's
local store writes its temporary file beside the target (``zarr.<hex>.partial`` in the root
folder), where a reader that lists the live store's groups found it and warned "Object at
zarr.<hex>.partial is not recognized as a component of a Zarr hierarchy".
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.archive.chunks import ChunkFiles
from dynode.archive.layout import (COMPRESSIONS, Block, Layout, _codecs, _root_meta,
                                   _shrink, _timed_arrays, _unfinished, _zarr_config, block_datasets)
from dynode.archive.lease import _HELD, LEASE_ATTR, _check_lease, new_lease
from dynode.archive.reading import IncompleteArchiveWarning, open_archive
from dynode.errors import ConfigurationError, DynodeError

# Chunk keys of the data arrays: ``c.<t>.0.0.0`` beside the array's zarr.json rather than
# ``c/<t>/0/0/0``: one file per chunk and no folders (the folders cost the writer ~4 mkdirs per
# chunk, 0.18 CPU-s per conv4 run). Readers follow the array metadata either way; an xarray
# that does not pass ``chunk_key_encoding`` on (before mid-2025) writes the nested keys.
_FLAT_KEYS = {"chunk_key_encoding": {"name": "default", "separator": "."}}
_flat_keys = True  # False once this xarray refused the encoding


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


def _put_outside(root: Path, key: str, data) -> None:
    """Write ``data`` (bytes-like) to the store file ``root/key`` atomically, through a
    temporary file in the store's parent folder (the same file system: the store was
    created there by a rename), so that nothing but finished files ever appears inside it."""
    dest = root / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.dynode-put-{uuid.uuid4().hex}"
    try:
        with open(tmp, "xb") as f:  # default permissions (umask), as zarr creates files
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@functools.cache
def _outside_temp_store() -> type:
    """zarr's :class:`~zarr.storage.LocalStore` whose ``set`` writes through
    :func:`_put_outside` (built on first use: zarr is imported lazily)."""
    from zarr.storage import LocalStore

    class _OutsideTempStore(LocalStore):
        async def set(self, key: str, value) -> None:
            self._check_writable()
            await asyncio.to_thread(_put_outside, self.root, key, value.as_buffer_like())

    return _OutsideTempStore


class ZarrArchiveWriter:
    """Streams blocks into a zarr v3 store following the protocol in the module docstring.

    ``times``: every recording time of the run (ms). The time axis is allocated for all of
    them when the store is created, so array shapes never change while the run goes.
    ``cache_chunks``: write the chunk files through the page cache and leave them there (as
    zarr does; faster to read back at once) instead of past it (``O_DIRECT``, or dropped once
    written where the file system refuses it: :mod:`dynode.archive.chunks`). The default
    (False) is the cheaper one for the run, since the kernel's writeback of cached pages takes
    CPU from it: recording every step of conv4 (841 MB, 2 torch threads, quiet 2-core VM,
    ``python benchmarks/run.py archive``) took 1.50x the unrecorded run, against 1.90x with
    True timed until the chunks were on the disk.
    """

    def __init__(self, path, layout: Layout, times, *, chunk_steps: int, compression="lz4",
                 overwrite: bool = False, cache_chunks: bool = False):
        if not isinstance(cache_chunks, bool):
            raise ConfigurationError(f"cache_chunks must be True or False, got {cache_chunks!r}")
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        self.path = prepare_path(path, overwrite)
        self.overwrite = overwrite
        self.layout = layout
        self.times = np.asarray(times, dtype=np.float64)
        self.chunk_steps = int(chunk_steps)
        self.compression = compression
        self.cache_chunks = cache_chunks
        self.steps_written = 0
        self._root = None
        self._lease: dict | None = None
        self._arrays: list[tuple[str, str, object]] = []  # (group, variable, zarr array)
        self._files: dict[int, ChunkFiles | None] = {}  # id(array) -> its direct chunk writer

    def open(self) -> None:
        """Create the store (once; :meth:`write` does it if this was not called)."""
        if self._root is None:
            self._create()

    def write(self, block: Block) -> None:
        """Create the store on the first call; write ``block`` at the next free steps."""
        self.open()
        with _zarr_config():
            self._write(block)

    def heartbeat(self) -> None:
        """Refresh the lease (called by an idle writer thread at least every HEARTBEAT_S)."""
        if self._root is not None and self._lease is not None:
            self._lease["heartbeat"] = time.time()
            self._update_root({LEASE_ATTR: self._lease})

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

        root = zarr.open_group(_outside_temp_store()(self.path), mode="r+", use_consolidated=False)
        self._arrays = list(_timed_arrays(root))
        self._files = {id(arr): ChunkFiles.of(arr, self.cache_chunks) for _, _, arr in self._arrays}
        self._meta = json.loads((self.path / "zarr.json").read_bytes())
        self._root = root

    def _update_root(self, changes: Mapping) -> None:
        """Set the root attributes ``changes`` (the commit, the lease's heartbeat): the root's
        zarr.json written whole and renamed into place (:func:`_put_outside`), directly rather
        than through zarr's event loop (about 3 ms a commit, 0.15 s per conv4 run). zarr's own
        view of the root is stale from here on; :meth:`finish` writes through it again, from
        these attributes."""
        self._meta["attributes"].update(changes)
        _put_outside(self.path, "zarr.json", json.dumps(self._meta, allow_nan=False).encode())

    def _remove_leftovers(self) -> None:
        """Remove unfinished stores (``.<name>.dynode-new-*``) of writers killed while creating
        this store; only those whose lease shows their writer is provably gone."""
        for tmp, st in _unfinished(self.path):
            if st is not None and st.dead:
                shutil.rmtree(tmp)

    def _build(self, tmp: Path) -> None:
        import zarr

        lay = self.layout
        empty = Block(np.zeros(0), {g.name: np.zeros((0, lay.batch) + tuple(len(v) for v in g.coords.values()),
                                                     dtype=g.dtype) for g in lay.groups},
                      np.zeros((0, lay.batch, len(lay.inputs)), dtype=lay.stimulus_dtype))
        self._lease = new_lease()
        attrs = {"populations": [g.name for g in lay.groups], **lay.attrs, "status": "incomplete",
                 "steps_written": 0, LEASE_ATTR: self._lease}  # verify_archive checks the groups
        dsets = block_datasets(Layout(**{**lay.__dict__, "attrs": attrs}), empty)
        global _flat_keys
        from zarr.storage import MemoryStore

        k, n = self.chunk_steps, len(self.times)
        # built in memory, then written out as plain files: zarr's local store hops to its event
        # loop for every metadata file (creating a 5-group store took 0.24 s, now 0.13 s)
        files: dict = {}
        mem = MemoryStore(store_dict=files)
        with _zarr_config():
            for i, (group, ds) in enumerate(dsets.items()):
                enc = {}
                for name, var in ds.variables.items():
                    enc[name] = {"compressors": _codecs(None)}  # every array is checksummed
                    if var.dims and var.dims[0] == "time":
                        if name == "time":  # written once, below
                            enc[name]["chunks"] = (max(1, min(n, max(k, 2 ** 16))),)
                        else:
                            enc[name] = {"chunks": (k,) + var.shape[1:],
                                         "compressors": _codecs(self.compression),
                                         **(_FLAT_KEYS if _flat_keys else {})}
                try:
                    ds.to_zarr(mem, group=None if group == "/" else group,
                               mode="w-" if i == 0 else "a", consolidated=False, encoding=enc,
                               zarr_format=3)
                except ValueError as exc:
                    if not (_flat_keys and "chunk_key_encoding" in str(exc)):
                        raise
                    _flat_keys = False  # this xarray refuses the key: start again with nested keys
                    self._release()
                    return self._build(tmp)
            # allocate the whole time axis now: shapes stay fixed while the run writes
            for _, name, arr in _timed_arrays(zarr.open_group(mem, mode="r+", use_consolidated=False)):
                arr.resize((n,) + arr.shape[1:])
                if name == "time":
                    arr[:] = self.times
        tmp.mkdir()
        for key in sorted(files, key=lambda key: (key != "zarr.json", key)):  # the lease first
            dest = tmp / key
            buf = files[key]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(buf.to_bytes())

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
        whole = n0 % self.chunk_steps == 0 and k <= self.chunk_steps  # one chunk along time
        for group, name, arr in self._arrays:  # whole new chunks, each written atomically
            if name not in ("rate", "stimulus"):
                continue
            data = block.rates[group] if name == "rate" else block.stimulus
            if data is None:
                raise DynodeError(f"internal: the block has no {name!r} for the archive's array")
            files = self._files.get(id(arr))
            if files is not None and whole:
                files.write(n0, data)
            else:
                arr[n0:n1] = data
        self._lease["heartbeat"] = time.time()
        self._update_root({"steps_written": n1, LEASE_ATTR: self._lease})  # commit
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
            kept = {k: v for k, v in self._meta["attributes"].items() if k != LEASE_ATTR}
            self._root.attrs.put({**kept, **dict(attrs or {}), "status": status})
        finally:
            self._release()
        import zarr

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            zarr.consolidate_metadata(self._root.store)  # as layout._consolidate, through our store

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
