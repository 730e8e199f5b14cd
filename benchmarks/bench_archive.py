"""Archive rows: the cost of streaming a recording to zarr, and memory flatness.

* record_conv4: the 4-layer conv field (36/64/121/256 channels, 3x3, full 3x3 recurrence
  delayed 6 ms, batch 32, 3x32x32, dt 1 ms, tau 5 ms). Baseline: the same run with nothing
  recorded (``integrate`` under ``no_grad`` keeping only the final state), 100 steps.
  Contenders: ``simulate`` recording every step of every population (float32; lz4, and
  uncompressed) to a zarr store (8.3 MB per step). Target: at most 15 % slower.
* memory_flat: peak RSS (MiB) of a fresh process that runs ``simulate`` to zarr over
  ``t_end`` and over ``10 * t_end`` (same field, batch and blocks). Target: the long run's
  peak within 10 % of the short one's.
* checksum_cost_lz4 / checksum_cost_raw: the archive writer alone (no model), 16 MiB blocks
  of conv4-shaped rates (batch 32; lz4 / uncompressed), with the crc32c codec that every
  dynode array carries against the same writer without it; the metric is the process's CPU
  time in ms (all threads), which a busy machine disturbs less than wall time. Target: at most 15 % more writer time (the writer runs
  in a background thread, overlapped with the solver).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

import dynode as dn
from harness import Benchmark
from nets import conv4_network

HERE = Path(__file__).resolve().parent


def _record_setup(quick: bool):
    batch, t_end = (8, 20.0) if quick else (32, 100.0)
    net = conv4_network()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stim = dn.stimuli.Constant(x)
    tmp = tempfile.TemporaryDirectory(prefix="dynode-bench-")
    counter = itertools.count()

    def plain():
        with torch.no_grad():
            dn.integrate(net, stim, t_end=t_end, dt=1.0, save_at=[t_end])

    def to_zarr():
        path = Path(tmp.name) / f"run{next(counter)}.zarr"
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=path, progress=False)

    def to_zarr_raw():
        path = Path(tmp.name) / f"run{next(counter)}.zarr"
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=path, progress=False,
                    compression=None)

    to_zarr.tmp = tmp  # keep the directory alive as long as the callables
    return {"no recording": plain, "every step to zarr": to_zarr,
            "every step to zarr, uncompressed": to_zarr_raw}


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
    import dynode.archive.writer as W
    from zarr.codecs import Crc32cCodec

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
    with_crc = W._codecs

    @contextlib.contextmanager
    def codecs(checksum: bool):
        W._codecs = with_crc if checksum else (
            lambda c: [x for x in with_crc(c) if not isinstance(x, Crc32cCodec)] or None)
        try:
            yield
        finally:
            W._codecs = with_crc

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


BENCHMARKS = [
    Benchmark("record_conv4", _record_setup, target={"every step to zarr": 1.15,
                                                    "every step to zarr, uncompressed": 1.15},
              note="conv4, batch 32, 100 steps, every population every step, float32"),
    Benchmark("checksum_cost_lz4", _checksum_setup("lz4"), target={"crc32c (dynode's default)": 1.15},
              metric="value", note="writer CPU ms for 9 blocks of 16 MiB (conv4 rates, batch 32), lz4"),
    Benchmark("checksum_cost_raw", _checksum_setup(None), target={"crc32c (dynode's default)": 1.15},
              metric="value", note="writer CPU ms for 9 blocks of 16 MiB, uncompressed"),
    Benchmark("memory_flat", _memory_setup, target={"t_end 240 ms": 1.10, "t_end 120 ms": 1.10},
              metric="value", note="peak RSS (MiB) of a fresh process, conv4 batch 32, to zarr"),
]
