"""Archive rows: the cost of streaming a recording to zarr, and memory flatness.

* record_conv4: the 4-layer conv field (36/64/121/256 channels, 3x3, full 3x3 recurrence
  delayed 6 ms, batch 32, 3x32x32, dt 1 ms, tau 5 ms). Baseline: the same run with nothing
  recorded (``integrate`` under ``no_grad`` keeping only the final state), 100 steps.
  Contenders: ``simulate`` recording every step of every population (float32; lz4, the
  default, and uncompressed) to a zarr store (8.3 MB per step; 841 MB per run). Target: at
  most 15 % slower. Each recording contender removes the store it wrote the time before
  (timed with it; ~260 chunk files, a few ms). Also: the writer's other setting
  (``cache_chunks=True``: chunks through the page cache and left there, as zarr leaves them;
  timed until they are on the disk, ``os.sync``, since their writeback costs the kernel CPU
  that the next run, or the next contender, would pay otherwise).
  The physical limit, the same bytes without the model, on one thread: lz4 + crc32c of every
  chunk (what the default writer must compute), the copy into the chunk + crc32c (what the
  uncompressed writer must compute), and dynode's whole writer (lz4, checksummed, O_DIRECT
  to the disk: its wall time includes waiting for the disk, which costs no CPU). On a
  machine whose cores the run keeps busy (torch threads = cores = n), the CPU those bytes
  need is taken from the compute: at best ``1 + limit / n``, and about ``1 + limit`` when
  the writer's thread stalls torch's statically split parallel loops (one of the n compute
  threads preempted, the others wait for it), plus what its streaming through the caches
  costs the compute.
* memory_flat: peak RSS (MiB) of a fresh process that runs ``simulate`` to zarr over
  ``t_end`` and over ``10 * t_end`` (same field, batch and blocks). Target: the long run's
  peak within 10 % of the short one's.
* record_conv4, a core left to the writer: the same pair with torch at (CPUs - 1) threads for
  both (at least 1): what recording costs when the writer does not take its CPU from the
  compute (a GPU run, or fewer torch threads than cores). Target: at most 15 % slower.
* observe_conv4: recording an observation model vs recording rates (dynode.observe), side by
  side in one run: conv4, batch 32, 100 steps of 1 ms (Euler), every population every step,
  ``reduce="mean"`` (the population time courses, as the experiments record them), to zarr.
  Baseline: ``observe=["rate"]``. Contenders: ``+ bold`` (Balloon-Windkessel on the mean rate:
  one numpy update of all populations per recorded time, in the writer thread), ``+ lfp`` (the
  broadband proxy: conv4 has no E/I split; the currents are the solver's own, kept from its
  first stage at each recorded time, so the cost is ``|I_c|`` and a weighted mean per connection
  plus one evaluation at the final time), ``+ drive`` (a mean of ``u`` per population), and
  ``+ lfp, bold`` with an electrode on every area. Target: each at most 10 % slower (issue 24:
  "recording an observation model costs at most 10 % over recording rates"). Under an adaptive
  solver or ``Euler(order="sequential")`` the currents are re-evaluated on the recorded states
  instead (about one more field evaluation per recorded time; not timed here).
* checksum_cost_lz4 / checksum_cost_raw: the archive writer alone (no model), 16 MiB blocks
  of conv4-shaped rates (batch 32; lz4 / uncompressed), with the crc32c that every
  dynode array carries against the same writer with the checksum computing nothing; the metric is the process's CPU
  time in ms (all threads), which a busy machine disturbs less than wall time. Target: at most 15 % more writer time (the writer runs
  in a background thread, overlapped with the solver).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from unittest import mock

import torch

import dynode as dn
import dynode.archive.writer as W
from dynode.observe import Electrode
from harness import Benchmark
from nets import conv4_network

HERE = Path(__file__).resolve().parent


def _conv4_run(quick: bool):
    """What both rows record: the conv4 field under a constant image (batch 32, 100 ms at dt 1;
    quick: 8, 20 ms), a temporary folder for the stores and a counter naming them."""
    batch, t_end = (8, 20.0) if quick else (32, 100.0)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return (conv4_network(), dn.stimuli.Constant(x), batch, t_end,
            tempfile.TemporaryDirectory(prefix="dynode-bench-"), itertools.count())


def _record_setup(quick: bool):
    import numpy as np

    net, stim, batch, t_end, tmp, counter = _conv4_run(quick)
    last: dict[str, Path] = {}

    def fresh(who: str) -> Path:
        """A new store path; the one this contender wrote last time is removed first (a few ms:
        the runs do not pile gigabytes of earlier stores onto the disk and page cache)."""
        if who in last:
            shutil.rmtree(last[who], ignore_errors=True)
        last[who] = Path(tmp.name) / f"run{next(counter)}.zarr"
        return last[who]

    def plain():
        with torch.no_grad():
            dn.integrate(net, stim, t_end=t_end, dt=1.0, save_at=[t_end])

    def to_zarr(compression="lz4", who="lz4", **kw):
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=fresh(who), progress=False,
                    compression=compression, **kw)

    def to_zarr_buffered():  # the writer's other setting, until the bytes are on the disk
        if "cache_chunks" in inspect.signature(dn.simulate).parameters:
            to_zarr(who="buffered", cache_chunks=True)
        else:
            with mock.patch.object(sys.modules["dynode.simulate"], "ZarrArchiveWriter",
                                   functools.partial(W.ZarrArchiveWriter, cache_chunks=True)):
                to_zarr(who="buffered")
        os.sync()

    # the physical limit: the same bytes through the codec alone, and through the writer alone
    data, times = _recorded_chunks(net, stim, t_end)
    nbytes = sum(a.nbytes for step in data for a in step.rates.values())
    codecs = _codec_chain("lz4")

    def codec_alone():
        for block in data:
            for a in block.rates.values():
                codecs(a)

    copy_crc = _codec_chain(None)
    dest = {g: np.empty_like(a) for g, a in data[0].rates.items()}

    def copy_alone():  # the uncompressed writer's CPU work: the steps into the chunk, its crc32c
        for block in data:
            for g, a in block.rates.items():
                np.copyto(dest[g], a)
                copy_crc(dest[g])

    def writer_alone(compression="lz4"):
        layout = _layout_of(data[0], batch)
        w = W.ZarrArchiveWriter(fresh(f"writer {compression}"), layout, times, chunk_steps=len(data[0]),
                                compression=compression)
        for block in data:
            w.write(block)
        w.finish("complete")

    to_zarr.tmp = tmp  # keep the directory alive as long as the callables
    print(f"record_conv4: {nbytes / 1e6:.0f} MB of rates per run", file=sys.stderr)
    return {"no recording": plain, "every step to zarr": to_zarr,
            "every step to zarr, uncompressed": lambda: to_zarr(None, "raw"),
            "every step to zarr, through the page cache (cache_chunks=True), until synced": to_zarr_buffered,
            "limit: lz4 + crc32c of the same bytes alone (1 thread)": codec_alone,
            "limit: copy + crc32c of the same bytes alone (1 thread; uncompressed)": copy_alone,
            "the writer alone, same bytes (lz4, crc32c, O_DIRECT files; wall)": writer_alone}


def _recorded_chunks(net, stim, t_end: float):
    """The run's recorded rates as the writer's blocks (2-step chunks, as simulate picks for
    conv4), recorded once in memory."""
    import numpy as np

    import dynode.archive as A

    tree = dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), progress=False).tree
    pops = [g for g in tree.children if "rate" in tree[g].data_vars]
    t = tree["time"].values
    rates = {g: np.ascontiguousarray(tree[g]["rate"].values) for g in pops}
    stimulus = np.ascontiguousarray(tree["stimulus"].values)
    k = 2
    blocks = [A.Block(t[i:i + k], {g: r[i:i + k] for g, r in rates.items()}, stimulus[i:i + k])
              for i in range(0, len(t), k)]
    return blocks, t


def _layout_of(block, batch: int):
    import numpy as np

    import dynode.archive as A

    dims = ("channel", "y", "x")
    groups = tuple(A.GroupSpec(n, dims, {d: np.arange(m) for d, m in zip(dims, r.shape[2:])}, {"units": "1"},
                               r.dtype) for n, r in block.rates.items())
    return A.Layout(batch=batch, conditions={}, groups=groups, inputs=("image",),
                    stimulus_dtype=block.stimulus.dtype, attrs={"dynode_archive": A.ARCHIVE_FORMAT})


def _spare_core_setup(quick: bool):
    """record_conv4 with a core left to the writer: torch at (CPUs - 1) threads, at least 1,
    for both contenders (restored after each call)."""
    net, stim, batch, t_end, tmp, counter = _conv4_run(quick)
    n = _SPARE

    def with_threads(fn):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                fn()
            finally:
                torch.set_num_threads(before)
        run.tmp = tmp
        return run

    def plain():
        with torch.no_grad():
            dn.integrate(net, stim, t_end=t_end, dt=1.0, save_at=[t_end])

    def to_zarr():
        path = Path(tmp.name) / f"spare{next(counter)}.zarr"
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=path, progress=False)
        shutil.rmtree(path)

    return {f"no recording ({n} torch threads)": with_threads(plain),
            f"every step to zarr ({n} torch threads)": with_threads(to_zarr)}


def _observe_setup(quick: bool):
    net, stim, batch, t_end, tmp, counter = _conv4_run(quick)
    patch = {a: Electrode((0.5, 0.5), 0.2) for a in ("V1", "V2", "V4", "IT")}

    def record(observe, electrodes=None):
        def run():
            path = Path(tmp.name) / f"obs{next(counter)}.zarr"
            dn.simulate(net, stim, t_end=t_end, dt=1.0, progress=False, store=path,
                        record=dn.Record(reduce="mean", observe=observe, electrodes=electrodes))
            shutil.rmtree(path)
        run.tmp = tmp
        return run

    return {"rate": record(["rate"]), "rate + bold": record(["rate", "bold"]),
            "rate + lfp": record(["rate", "lfp"]), "rate + drive": record(["rate", "drive"]),
            "rate + lfp, bold (electrodes)": record(["rate", "lfp", "bold"], patch)}


def _codec_chain(compression):
    """compress + crc32c of one chunk, as dynode's writer encodes it (numcodecs, 1 thread)."""
    import google_crc32c
    import numpy as np
    from numcodecs import Blosc

    blosc = Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE, typesize=4)

    def encode(a):
        body = a.reshape(-1).view(np.uint8)
        if compression == "lz4":
            body = blosc.encode(body)
        return google_crc32c.value(body)
    return encode


_CHILD = textwrap.dedent("""
    import resource, sys, tempfile, torch
    sys.path.insert(0, sys.argv[1])
    import dynode as dn
    from nets import conv4_network
    torch.set_num_threads(int(sys.argv[4]))
    batch, t_end = int(sys.argv[2]), float(sys.argv[3])
    net = conv4_network()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        dn.simulate(net, dn.stimuli.Constant(x), t_end=t_end, dt=1.0, store=d + "/run.zarr",
                    chunk_steps=int(sys.argv[5]), progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux: KiB)
""")


def _peak_rss(batch: int, t_end: float, chunk: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(HERE), str(batch), str(t_end),
                          str(torch.get_num_threads()), str(chunk)],
                         capture_output=True, text=True, check=True, env=dict(os.environ))
    return float(out.stdout.strip().splitlines()[-1])


def _memory_setup(quick: bool):
    batch, t_end, chunk = (8, 12.0, 4) if quick else (32, 24.0, 6)
    return {f"t_end {t_end:g} ms": lambda: _peak_rss(batch, t_end, chunk),
            f"t_end {10 * t_end:g} ms": lambda: _peak_rss(batch, 10 * t_end, chunk)}


def _checksum_setup(compression):
    return lambda quick: _checksum_contenders(quick, compression)


def _checksum_contenders(quick: bool, compression):
    import contextlib

    import numpy as np

    import dynode.archive as A

    batch, k, n_blocks = (8, 8, 4) if quick else (32, 8, 10)
    shapes = {"V1": (36, 16, 16), "V2": (64, 8, 8), "V4": (121, 4, 4), "IT": (256, 2, 2)}
    rng = np.random.default_rng(0)
    groups = tuple(A.GroupSpec(n, ("channel", "y", "x"), {d: np.arange(m) for d, m in zip("cyx", s)},
                               {"units": "1"}, np.dtype("float32")) for n, s in shapes.items())
    layout = A.Layout(batch=batch, conditions={}, groups=groups, inputs=("image",),
                      stimulus_dtype=np.dtype("float32"), attrs={"dynode_archive": A.ARCHIVE_FORMAT})
    rates = {n: np.maximum(rng.standard_normal((k, batch) + s, dtype=np.float32), 0)
             for n, s in shapes.items()}
    stim = rng.random((k, batch, 1), dtype=np.float32)
    times = np.arange(k * n_blocks, dtype=np.float64)
    tmp = tempfile.TemporaryDirectory(prefix="dynode-bench-")
    counter = itertools.count()

    @contextlib.contextmanager
    def codecs(checksum: bool):
        """Without: the writer's crc32c computes nothing (it stores 0; the store is never read)."""
        import google_crc32c

        if checksum:
            yield
            return
        with mock.patch.object(google_crc32c, "value", lambda data: 0):
            yield

    def write(checksum):
        def run() -> float:  # CPU ms of this process (all threads): robust to a busy machine
            with codecs(checksum):
                w = A.ZarrArchiveWriter(Path(tmp.name) / f"w{next(counter)}.zarr", layout, times,
                                        chunk_steps=k, compression=compression)
                w.write(A.Block(times[:k], rates, stim))  # creates the store
                start = time.process_time()
                for b in range(1, n_blocks):
                    w.write(A.Block(times[b * k:(b + 1) * k], rates, stim))
                spent = time.process_time() - start
                w.finish("complete")
            return 1e3 * spent
        run.tmp = tmp
        return run

    return {"no checksum": write(False), "crc32c (dynode's default)": write(True)}


_SPARE = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) - 1)

BENCHMARKS = [
    Benchmark("record_conv4", _record_setup, target={"every step to zarr": 1.15,
                                                    "every step to zarr, uncompressed": 1.15},
              note="conv4, batch 32, 100 steps, every population every step, float32"),
    Benchmark("record_conv4, a core left to the writer", _spare_core_setup,
              target={f"every step to zarr ({_SPARE} torch threads)": 1.15},
              note="as record_conv4 (lz4, the default), torch at CPUs - 1 threads for both: the writer's "
                   "cost when the compute does not need every core (e.g. a GPU run)"),
    Benchmark("observe_conv4", _observe_setup, target={"rate + bold": 1.10, "rate + lfp": 1.10, "rate + drive": 1.10,
                                                      "rate + lfp, bold (electrodes)": 1.10},
              note="conv4, batch 32, 100 steps, reduce='mean' to zarr; observations vs rates"),
    Benchmark("checksum_cost_lz4", _checksum_setup("lz4"), target={"crc32c (dynode's default)": 1.15},
              metric="value", note="writer CPU ms for 9 blocks of 16 MiB (conv4 rates, batch 32), lz4"),
    Benchmark("checksum_cost_raw", _checksum_setup(None), target={"crc32c (dynode's default)": 1.15},
              metric="value", note="writer CPU ms for 9 blocks of 16 MiB, uncompressed"),
    Benchmark("memory_flat", _memory_setup, target={"t_end 240 ms": 1.10, "t_end 120 ms": 1.10},
              metric="value", note="peak RSS (MiB) of a fresh process, conv4 batch 32, to zarr"),
]
