"""The archive writer's direct chunk path (:class:`dynode.archive.chunks.ChunkFiles`).

ZarrArchiveWriter writes whole chunks straight to their files instead of going through zarr's
event loop. These tests hold it to the format: the chunk files are byte-for-byte the ones
zarr writes (every codec, storage dtype, a padded last chunk), the direct path is really
taken for dynode's arrays, and the checksums still catch damage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import fields
import dynode.archive as A
import dynode.archive.writer as W
from dynode.archive.chunks import ChunkFiles
from dynode.errors import ArchiveCorruptError, ConfigurationError

SHAPES = {"V1": (3, 4, 4), "IT": (5,)}
BATCH, K = 2, 3


def _layout(dtype) -> A.Layout:
    groups = tuple(A.GroupSpec(n, ("channel", "y", "x")[:len(s)],
                               {d: np.arange(m) for d, m in zip(("channel", "y", "x"), s)},
                               {"units": "1"}, np.dtype(dtype)) for n, s in SHAPES.items())
    return A.Layout(batch=BATCH, conditions={}, groups=groups, inputs=("image",),
                    stimulus_dtype=np.dtype("float32"), attrs={"dynode_archive": A.ARCHIVE_FORMAT})


def _blocks(n_steps: int, dtype, seed: int = 0):
    """Blocks of K steps (the last one shorter): relu'd noise, as rates look."""
    rng = np.random.default_rng(seed)
    times = np.arange(n_steps, dtype=np.float64)
    rates = {n: np.maximum(rng.standard_normal((n_steps, BATCH) + s), 0).astype(dtype)
             for n, s in SHAPES.items()}
    stim = rng.random((n_steps, BATCH, 1), dtype=np.float32)
    out = [A.Block(times[i:i + K], {n: r[i:i + K] for n, r in rates.items()}, stim[i:i + K])
           for i in range(0, n_steps, K)]
    return times, rates, stim, out


def _write(path: Path, blocks, times, dtype, compression, status="complete",
           cache_chunks: bool = False) -> A.ZarrArchiveWriter:
    w = A.ZarrArchiveWriter(path, _layout(dtype), times, chunk_steps=K, compression=compression,
                            cache_chunks=cache_chunks)
    for b in blocks:
        w.write(b)
    w.finish(status)
    return w


def _chunk_files(path: Path) -> dict[str, bytes]:
    """Every chunk file (zarr v3 default keys: ``c.0.0`` flat, or ``c/0/0`` nested)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and (p.name.startswith("c.") or "c" in p.relative_to(path).parts[:-1])}


@pytest.mark.parametrize("compression", ["lz4", "zstd", None])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_chunk_files_are_byte_identical_to_zarrs(tmp_path, monkeypatch, compression, dtype):
    times, _, _, blocks = _blocks(3 * K + 1, dtype)  # 4 chunks, the last one padded
    direct = _write(tmp_path / "direct.zarr", blocks, times, dtype, compression)
    assert all(direct._files[id(arr)] is not None for _, name, arr in direct._arrays if name != "time")
    cached = _write(tmp_path / "cached.zarr", blocks, times, dtype, compression, cache_chunks=True)
    assert all(f is None or f.cache_chunks for f in cached._files.values())
    monkeypatch.setattr(W.ChunkFiles, "of", classmethod(lambda cls, arr, cache_chunks=False: None))
    via_zarr = _write(tmp_path / "zarr.zarr", blocks, times, dtype, compression)
    assert all(f is None for f in via_zarr._files.values())
    a, b = _chunk_files(tmp_path / "direct.zarr"), _chunk_files(tmp_path / "zarr.zarr")
    data_chunks = [k for k in a if k.startswith(tuple(f"{g}/rate/" for g in SHAPES) + ("stimulus/",))]
    assert len(data_chunks) == 4 * (len(SHAPES) + 1)
    assert a == b == _chunk_files(tmp_path / "cached.zarr")
    assert not list((tmp_path / "direct.zarr").rglob("*.partial"))


def test_round_trip_and_checksums_verify(tmp_path):
    times, rates, stim, blocks = _blocks(3 * K + 2, "float32")
    path = tmp_path / "a.zarr"
    _write(path, blocks, times, "float32", "lz4")
    report = A.verify_archive(path)
    assert report.checksummed and report.steps_written == len(times) and not report.damaged
    tree = A.open_archive(path)
    for n, r in rates.items():
        np.testing.assert_array_equal(tree[n]["rate"].values, r)
    np.testing.assert_array_equal(tree["stimulus"].values, stim)
    np.testing.assert_array_equal(tree["time"].values, times)


def test_a_flipped_byte_in_a_direct_chunk_is_caught(tmp_path):
    times, _, _, blocks = _blocks(2 * K, "float32")
    path = tmp_path / "a.zarr"
    _write(path, blocks, times, "float32", "lz4")
    chunk = fields.chunk_file(path / "V1" / "rate", 1)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ArchiveCorruptError) as e:
        A.verify_archive(path)
    damaged = {(d.group, d.variable, d.steps) for d in e.value.report.damaged}
    assert damaged == {("V1", "rate", (K, 2 * K - 1))}


def test_a_failed_run_keeps_its_partial_block(tmp_path):
    """A run that stops mid-chunk writes its steps padded with the fill value and is cut to
    them; the archive opens with exactly those steps."""
    times, rates, _, blocks = _blocks(3 * K, "float32")
    part = blocks[1]
    short = A.Block(part.times[:1], {n: r[:1] for n, r in part.rates.items()}, part.stimulus[:1])
    path = tmp_path / "a.zarr"
    _write(path, [blocks[0], short], times, "float32", "lz4", status="failed: test")
    assert zarr.open_group(path, mode="r")["V1"]["rate"].shape[0] == K + 1
    with pytest.warns(A.IncompleteArchiveWarning, match="failed: test"):
        tree = A.open_archive(path)
    np.testing.assert_array_equal(tree["V1"]["rate"].values, rates["V1"][:K + 1])
    assert tree.attrs["status"] == "failed: test"
    assert A.verify_archive(path).steps_written == K + 1


def test_chunk_files_refuse_a_block_that_is_not_one_chunk(tmp_path):
    times, _, _, blocks = _blocks(2 * K, "float32")
    w = A.ZarrArchiveWriter(tmp_path / "a.zarr", _layout("float32"), times, chunk_steps=K)
    w.write(blocks[0])
    files = next(f for f in w._files.values() if f is not None)
    with pytest.raises(A.layout.ArchiveError, match="not one whole chunk"):
        files.write(1, np.zeros((K,) + files.chunks[1:], dtype=np.float32))
    w.write(blocks[1])
    w.finish("complete")


def test_other_codecs_fall_back_to_zarr(tmp_path):
    """An array whose codecs the direct path does not reproduce gets None (zarr writes it)."""
    from zarr.codecs import GzipCodec

    arr = zarr.create_array(tmp_path / "g.zarr", shape=(4, 2), chunks=(2, 2), dtype="float32",
                            compressors=[GzipCodec()])
    assert ChunkFiles.of(arr) is None


def test_cache_chunks_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigurationError, match="cache_chunks"):
        A.ZarrArchiveWriter(tmp_path / "a.zarr", _layout("float32"), np.arange(3.0), chunk_steps=K,
                            cache_chunks="yes")


def test_simulate_passes_cache_chunks_to_the_writer(tmp_path, monkeypatch):
    """``dn.simulate(cache_chunks=)`` reaches the zarr writer; a non-bool, or True without a store,
    is refused before the first step."""
    import torch

    import dynode as dn

    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("A", (2,), tau=5.0, phi="identity")
    net.connect("x", "A")
    seen = []
    real = W.ZarrArchiveWriter.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("cache_chunks"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(W.ZarrArchiveWriter, "__init__", spy)
    x = torch.ones(1, 2)
    dn.simulate(net, x, t_end=3.0, dt=1.0, store=tmp_path / "a.zarr", cache_chunks=True, progress=False)
    assert seen == [True]
    with pytest.raises(ConfigurationError, match="cache_chunks must be True or False"):
        dn.simulate(net, x, t_end=3.0, dt=1.0, store=tmp_path / "b.zarr", cache_chunks=1, progress=False)
    with pytest.raises(ConfigurationError, match="pass store="):
        dn.simulate(net, x, t_end=3.0, dt=1.0, cache_chunks=True, progress=False)


# -- where the bytes go: O_DIRECT, its fallback, flat chunk keys ---------------------------------
def _opens(monkeypatch, refuse_direct: bool = False) -> list[int]:
    """Record the flags of every chunk file the writer opens with os.open; optionally refuse O_DIRECT with
    EINVAL, as a file system without it does."""
    import errno
    import os

    import dynode.archive.chunks as C

    flags: list[int] = []
    real = os.open

    def fake_open(path, fl, *args, **kw):
        if not str(path).endswith(".partial"):  # os is shared: only the chunk files
            return real(path, fl, *args, **kw)
        flags.append(fl)
        if refuse_direct and fl & C._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, fl, *args, **kw)

    monkeypatch.setattr(C.os, "open", fake_open)
    return flags


@pytest.mark.skipif(not getattr(__import__("os"), "O_DIRECT", 0), reason="no O_DIRECT on this system")
@pytest.mark.parametrize("compression", ["lz4", None])
def test_chunks_go_past_the_page_cache_and_stay_byte_identical(tmp_path, monkeypatch, compression):
    """cache_chunks=False opens every chunk with O_DIRECT (the file system may still refuse it);
    whatever path each chunk took, the files equal zarr's, also for a body that is page-aligned
    (written in place: whole pages straight from it, only the tail through the scratch buffer)
    and not a whole number of pages long."""
    import os

    from dynode.archive.chunks import ALIGN, aligned_empty

    shape = (3, 25, 40)  # 2 samples x 3 steps x 3000 float32 = 72000 bytes: 17 pages and a tail
    times = np.arange(2 * K, dtype=np.float64)
    rng = np.random.default_rng(1)
    blocks = []
    for i in range(2):
        r = aligned_empty(K * BATCH * 3000 * 4).view(np.float32).reshape((K, BATCH) + shape)
        r[...] = np.maximum(rng.standard_normal(r.shape), 0)
        blocks.append(A.Block(times[i * K:(i + 1) * K], {"V1": r}, rng.random((K, BATCH, 1), dtype=np.float32)))
        assert r.ctypes.data % ALIGN == 0
    groups = (A.GroupSpec("V1", ("channel", "y", "x"), {d: np.arange(m) for d, m in zip(("channel", "y", "x"), shape)},
                          {"units": "1"}, np.dtype("float32")),)
    layout = A.Layout(batch=BATCH, conditions={}, groups=groups, inputs=("image",),
                      stimulus_dtype=np.dtype("float32"), attrs={"dynode_archive": A.ARCHIVE_FORMAT})

    def write(path, **kw):
        w = A.ZarrArchiveWriter(path, layout, times, chunk_steps=K, compression=compression, **kw)
        for b in blocks:
            w.write(b)
        w.finish("complete")
        return w

    flags = _opens(monkeypatch)
    w = write(tmp_path / "direct.zarr")
    assert len(flags) == 2 * 2 and all(f & os.O_DIRECT for f in flags)  # V1 + stimulus, 2 chunks each
    files = w._files[id(next(arr for g, n, arr in w._arrays if g == "V1" and n == "rate"))]
    if files.direct and compression is None:  # the aligned body went straight from its memory
        assert files._scratch.nbytes < 72000 - ALIGN
    flags.clear()
    write(tmp_path / "cached.zarr", cache_chunks=True)
    assert flags == []  # buffered writes (built-in open(), no O_DIRECT)
    monkeypatch.setattr(W.ChunkFiles, "of", classmethod(lambda cls, arr, cache_chunks=False: None))
    write(tmp_path / "zarr.zarr")
    a, b, c = (_chunk_files(tmp_path / f"{n}.zarr") for n in ("direct", "zarr", "cached"))
    assert len([k for k in a if k.startswith(("V1/rate/", "stimulus/"))]) == 4 and a == b == c
    np.testing.assert_array_equal(A.open_archive(tmp_path / "direct.zarr")["V1"]["rate"].values,
                                  np.concatenate([b.rates["V1"] for b in blocks]))


def test_a_file_system_without_o_direct_gets_buffered_chunks(tmp_path, monkeypatch):
    """EINVAL on the O_DIRECT open: that chunk and every later one go through the page cache,
    and the archive is the same bytes."""
    import os

    times, rates, _, blocks = _blocks(3 * K, "float32")
    flags = _opens(monkeypatch, refuse_direct=True)
    w = _write(tmp_path / "a.zarr", blocks, times, "float32", "lz4")
    written = [w._files[id(arr)] for _, name, arr in w._arrays if name in ("rate", "stimulus")]
    assert len(written) == 3 and not any(f.direct for f in written)
    assert len(flags) == 3  # one refused try per array, then buffered
    tree = A.open_archive(tmp_path / "a.zarr")
    for n, r in rates.items():
        np.testing.assert_array_equal(tree[n]["rate"].values, r)
    assert not [p for p in (tmp_path / "a.zarr").rglob("*.partial")]


def test_chunk_keys_are_flat_and_an_older_xarray_gets_nested_ones(tmp_path, monkeypatch):
    """Data chunks sit beside their array's zarr.json as c.<t>.0... files (no folders to make);
    an xarray that refuses the chunk_key_encoding encoding gets zarr's nested default, and the
    archive reads the same."""
    import xarray as xr

    times, rates, _, blocks = _blocks(2 * K, "float32")
    _write(tmp_path / "flat.zarr", blocks, times, "float32", "lz4")
    assert sorted(p.name for p in (tmp_path / "flat.zarr" / "V1" / "rate").iterdir()) == \
        ["c.0.0.0.0.0", "c.1.0.0.0.0", "zarr.json"]

    real = xr.Dataset.to_zarr

    def old_xarray(self, *args, encoding=None, **kw):
        if any("chunk_key_encoding" in e for e in (encoding or {}).values()):
            raise ValueError("unexpected encoding parameters for zarr backend:  ['chunk_key_encoding']")
        return real(self, *args, encoding=encoding, **kw)

    monkeypatch.setattr(xr.Dataset, "to_zarr", old_xarray)
    monkeypatch.setattr(W, "_flat_keys", True)
    _write(tmp_path / "nested.zarr", blocks, times, "float32", "lz4")
    assert (tmp_path / "nested.zarr" / "V1" / "rate" / "c" / "1").is_dir()
    assert W._flat_keys is False
    assert _chunk_files(tmp_path / "nested.zarr").keys() != _chunk_files(tmp_path / "flat.zarr").keys()
    for name in ("flat", "nested"):
        tree = A.open_archive(tmp_path / f"{name}.zarr")
        np.testing.assert_array_equal(tree["V1"]["rate"].values, rates["V1"])
    assert A.verify_archive(tmp_path / "nested.zarr").checksummed
